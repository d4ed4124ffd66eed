"""`vgpa info`: what it reads from the compiled module, and what it says about GPUs of given
compute capabilities (fake ones: there is no GPU here)."""

import os
import subprocess
import sys

import pytest

from vgpa import _backend, _build_config, cli


def test_cuda_build_lines_report_archs_runtime_driver_and_coverage():
    gpus = [("NVIDIA A100", (8, 0)), ("NVIDIA L4", (8, 9)), ("NVIDIA H100", (9, 0)), ("NVIDIA B200", (10, 0)),
            ("RTX 5090", (12, 0)), ("Tesla T4", (7, 5)), ("future", (13, 0))]
    lines = cli.cuda_build_lines("80;86;89;90;100;120", "120", 13000, gpus)
    assert lines[0] == "  SASS sm_80 sm_86 sm_89 sm_90 sm_100 sm_120; PTX compute_120 (JIT-compiled on newer GPUs)"
    assert lines[1] == "  CUDA runtime 13.0, linked statically; needs an NVIDIA driver >= 580.65.06 on Linux"
    assert lines[2:] == [
        "  GPU 0 NVIDIA A100: compute capability 8.0: covered by SASS sm_80",
        "  GPU 1 NVIDIA L4: compute capability 8.9: covered by SASS sm_89",
        "  GPU 2 NVIDIA H100: compute capability 9.0: covered by SASS sm_90",
        "  GPU 3 NVIDIA B200: compute capability 10.0: covered by SASS sm_100",
        "  GPU 4 RTX 5090: compute capability 12.0: covered by SASS sm_120",
        "  GPU 5 Tesla T4: compute capability 7.5: NOT covered; rebuild with VGPA_CUDA_ARCHS=\"75\" (or add 75 to "
        "the list), with a CUDA toolkit whose nvcc --list-gpu-arch lists compute_75",
        "  GPU 6 future: compute capability 13.0: no SASS for it; runs the PTX of compute_120, JIT-compiled by the "
        "driver (slower first launch)",
    ]


def test_cuda_build_lines_of_an_unknown_runtime_and_a_one_arch_build():
    lines = cli.cuda_build_lines("80", "80", 14020, [("A10", (8, 6)), ("H100", (9, 0))])
    assert lines[1] == "  CUDA runtime 14.2, linked statically; needs an NVIDIA driver supporting CUDA 14.2"
    assert lines[2].endswith("covered by SASS sm_80")
    assert "runs the PTX of compute_80" in lines[3]


def test_info_reports_what_the_module_was_compiled_with():
    ext = _backend.extension()
    assert ext is not None, _backend.extension_error()
    text = cli.info()
    if not ext.with_cuda():
        assert "vgpa._C: C++ CPU only" in text
        assert ext.cuda_archs() == ""
        return
    sass, ptx = ext.cuda_archs().split(";"), ext.cuda_ptx_arch()
    assert sass and all(_build_config.normalize_arch(a) == a for a in sass)
    assert ptx == _build_config.ptx_arch(sass)  # the PTX of the newest SASS arch
    assert f"SASS {' '.join('sm_' + a for a in sass)}; PTX compute_{ptx}" in text
    requested = os.environ.get("VGPA_CUDA_ARCHS")
    if requested and all(c.isdigit() or c in ";" for c in requested):
        assert sass == _build_config.parse_cuda_archs(requested)


def test_vgpa_info_runs():
    run = subprocess.run([sys.executable, "-m", "vgpa", "info"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("vgpa ") and "vgpa._C:" in run.stdout


@pytest.mark.parametrize("argv", [["info", "--bogus"]])
def test_vgpa_info_rejects_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_cuda_status_tells_no_driver_from_an_old_driver():
    """The CUDA runtime says "driver version is insufficient" for both; vgpa info tells them apart."""
    runtime_error = "unusable: CUDA driver version is insufficient for CUDA runtime version"
    assert _backend.cuda_status_with_reason(runtime_error, 13000, None) \
        == "unusable: no NVIDIA driver on this machine (libcuda.so.1 not found)"
    assert _backend.cuda_status_with_reason(runtime_error, 13000, 12040) == (
        "unusable: the NVIDIA driver supports CUDA 12.4, older than the CUDA 13.0 runtime of this build "
        "(it needs a driver >= 580.65.06 on Linux)")
    assert _backend.cuda_status_with_reason(runtime_error, 12080, 13000) == runtime_error  # another cause
    assert _backend.cuda_status_with_reason("driver 13.0, 1 device(s)", 13000, 13000) == "driver 13.0, 1 device(s)"


@pytest.mark.parametrize("argv", [["-m", "vgpa", "--version"], ["-c", "from vgpa.cli import main; main()", "--version"]])
def test_version_flag(argv):
    import vgpa

    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"vgpa {vgpa.__version__}")
    assert run.stdout.strip() == cli.version_line()
