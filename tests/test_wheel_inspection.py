"""The wheel inspection (vgpa_tools/wheels/inspect_wheel.py): its parsers and checks fed crafted
outputs of cuobjdump, readelf and auditwheel, and one real inspection of a wheel assembled from
this source tree and its compiled module."""

import glob
import os
import sys
import zipfile
from pathlib import Path

import pytest

from vgpa_tools.wheels import inspect_wheel as iw

REPO = Path(__file__).resolve().parents[1]

CUOBJDUMP_80_90 = """\
ELF file    1: cuda_runtime_info.sm_80.cubin
ELF file    2: cuda_runtime_info.sm_90.cubin
ELF file    3: render_points.sm_80.cubin
ELF file    4: render_points.sm_90.cubin
PTX file    1: cuda_runtime_info.sm_90.ptx
PTX file    2: render_points.sm_90.ptx
"""


def test_cuobjdump_listing_is_read_per_object():
    sass, ptx = iw.parse_cuobjdump_list(CUOBJDUMP_80_90 + "cuobjdump info    : something else\n")
    assert sass == {"cuda_runtime_info": {"80", "90"}, "render_points": {"80", "90"}}
    assert ptx == {"cuda_runtime_info": {"90"}, "render_points": {"90"}}
    # a repeated object name gets an index; arch-specific names keep their suffix
    sass, ptx = iw.parse_cuobjdump_list("ELF file    1: t.1.sm_80.cubin\nELF file    2: t.2.sm_90a.cubin\n"
                                        "ELF file    3: t.3.sm_80.cubin\nPTX file    1: t.1.sm_90.ptx\n")
    assert sass == {"t": {"80", "90a"}} and ptx == {"t": {"90"}}


def test_device_code_of_exactly_the_requested_archs_passes():
    sass, ptx = iw.parse_cuobjdump_list(CUOBJDUMP_80_90)
    assert iw.check_device_code(sass, ptx, ["80", "90"]) == []
    assert iw.check_device_code(sass, ptx, None) == []  # consistent on its own


@pytest.mark.parametrize("expected, problem", [
    (["80", "86", "90"], "missing 86"),
    (["90"], "not requested 80"),
    (["80", "100"], "PTX 90, expected exactly compute_100"),
])
def test_device_code_other_than_requested_fails(expected, problem):
    sass, ptx = iw.parse_cuobjdump_list(CUOBJDUMP_80_90)
    problems = iw.check_device_code(sass, ptx, expected)
    assert any(problem in p for p in problems), problems
    assert {p.split(":")[0] for p in problems} == {"cuda_runtime_info", "render_points"}  # names each object


def test_an_object_missing_an_arch_or_its_ptx_fails_even_without_a_request():
    sass, ptx = iw.parse_cuobjdump_list(CUOBJDUMP_80_90.replace("ELF file    4: render_points.sm_90.cubin\n", "")
                                        .replace("PTX file    1: cuda_runtime_info.sm_90.ptx\n", ""))
    problems = iw.check_device_code(sass, ptx, None)
    assert any(p.startswith("render_points: SASS 80") and "missing 90" in p for p in problems), problems
    assert any(p.startswith("cuda_runtime_info: PTX none") for p in problems), problems


def test_ptx_of_an_older_arch_or_of_several_fails():
    sass, _ = iw.parse_cuobjdump_list(CUOBJDUMP_80_90)
    assert iw.check_device_code(sass, {"cuda_runtime_info": {"80"}, "render_points": {"90"}}, ["80", "90"]) \
        == ["cuda_runtime_info: PTX 80, expected exactly compute_90 (the newest arch)"]
    assert iw.check_device_code(sass, {"cuda_runtime_info": {"80", "90"}, "render_points": {"90"}}, ["80", "90"]) \
        == ["cuda_runtime_info: PTX 80;90, expected exactly compute_90 (the newest arch)"]


def test_no_device_code_fails():
    assert iw.check_device_code({}, {}, ["80"]) == ["no CUDA device code in the module (built without nvcc?)"]


READELF = """
Dynamic section at offset 0x4071c0 contains 30 entries:
  Tag        Type                         Name/Value
 0x000000000000000f (RPATH)              Library rpath: [$ORIGIN/../vgpa.libs]
 0x0000000000000001 (NEEDED)             Shared library: [libstdc++.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [libgomp-f9a9ad78.so.1.0.0]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
{extra}"""


def test_needed_libraries_are_read_and_system_ones_pass():
    assert iw.parse_needed(READELF.format(extra="")) == ["libstdc++.so.6", "libgomp-f9a9ad78.so.1.0.0", "libc.so.6"]
    assert iw.check_needed("vgpa/_C.so", iw.parse_needed(READELF.format(extra=""))) == []


@pytest.mark.parametrize("library, why", [
    ("libcudart.so.13", "linked statically"), ("libcuda.so.1", "linked statically"),
    ("libtorch_cpu.so", "must not link torch"), ("libc10.so", "must not link torch"),
    ("libtorch_python.so", "must not link torch"), ("libnvrtc.so.13", "linked statically"),
])
def test_a_shared_cuda_runtime_or_torch_library_fails(library, why):
    text = READELF.format(extra=f" 0x0000000000000001 (NEEDED)             Shared library: [{library}]\n")
    problems = iw.check_needed("vgpa/_C.so", iw.parse_needed(text))
    assert len(problems) == 1 and library in problems[0] and why in problems[0]


AUDITWHEEL_OK = """
vgpa-0.1.0+cu130-cp311-cp311-manylinux_2_34_x86_64.whl is consistent
with the following platform tag: "manylinux_2_34_x86_64".

The wheel references external versioned symbols in these
system-provided shared libraries: libgcc_s.so.1 with versions
{'GCC_3.0'}, libc.so.6 with versions {'GLIBC_2.34'}
"""


def test_auditwheel_show_is_read():
    assert iw.parse_auditwheel_show(AUDITWHEEL_OK) == ("manylinux_2_34_x86_64", [])
    tag, problems = iw.parse_auditwheel_show(
        'vgpa-0.1.0+cu130-cp311-cp311-linux_x86_64.whl is consistent with the\nfollowing platform tag: '
        '"linux_x86_64".\n\nThe wheel requires libcudart.so.13 which is not available in the manylinux policy\n')
    assert tag == "linux_x86_64" and problems == ["The wheel requires libcudart.so.13 which is not available in "
                                                  "the manylinux policy"]


def test_version_label_says_what_is_inside():
    assert iw.check_version_label("0.1.0+cu130", True, (13, 0)) == []
    assert iw.check_version_label("0.1.0+cu130", True, None) == []
    assert iw.check_version_label("0.1.0+cpu", False) == []
    assert iw.check_version_label("0.1.0+cu128", True, (13, 0))
    assert iw.check_version_label("0.1.0", True, (13, 0))
    assert iw.check_version_label("0.1.0+cpu", True)
    assert iw.check_version_label("0.1.0+cu130", False)
    assert iw.wheel_version("dist/vgpa-0.1.0+cu130-cp311-cp311-manylinux_2_34_x86_64.whl") == "0.1.0+cu130"
    with pytest.raises(ValueError, match="not a wheel"):
        iw.wheel_version("vgpa-0.1.0.tar.gz")


def _fake_tree(tmp_path):
    """vgpa/ with a subpackage and the checkout's symlink to kernels/ (a plain folder, no __init__.py),
    which the wheel maps."""
    for rel in ("vgpa/__init__.py", "vgpa/ops/__init__.py", "vgpa/ops/new_op.py",
                "kernels/new_kernel.py", "kernels/sub/__init__.py", "kernels/sub/deep.py", "bench/harness.py",
                "bench/results/notes.txt", "vgpa/__pycache__/x.cpython-311.pyc"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    os.symlink("../kernels", tmp_path / "vgpa" / "kernels")
    return tmp_path


def test_expected_files_are_found_not_listed(tmp_path):
    root = _fake_tree(tmp_path)
    assert iw.expected_python_files(root) == {
        "vgpa/__init__.py", "vgpa/ops/__init__.py", "vgpa/ops/new_op.py",
        "vgpa/kernels/new_kernel.py", "vgpa/kernels/sub/__init__.py", "vgpa/kernels/sub/deep.py",
        "vgpa/bench/harness.py"}


def test_a_forgotten_file_or_module_fails():
    expected = {"vgpa/__init__.py", "vgpa/kernels/new_kernel.py"}
    names = ["vgpa/__init__.py", "vgpa/_C.cpython-311-x86_64-linux-gnu.so"]
    assert iw.check_files(names, expected, emulation=False) == ["missing vgpa/kernels/new_kernel.py"]
    assert iw.check_files(names + ["vgpa/kernels/new_kernel.py"], expected, emulation=False) == []
    assert iw.check_files(names + ["vgpa/kernels/new_kernel.py"], expected, emulation=True) \
        == ["missing vgpa/_C_cuda_emu.*.so (--emulation)"]
    assert iw.check_files(["vgpa/__init__.py", "vgpa/kernels/new_kernel.py"], expected, emulation=False) \
        == ["missing the compiled module vgpa/_C.*.so"]


def test_the_source_tree_expects_every_package_file():
    expected = iw.expected_python_files(REPO)
    for path in glob.glob(str(REPO / "kernels" / "*.py")) + glob.glob(str(REPO / "bench" / "*.py")):
        assert f"vgpa/{Path(path).parent.name}/{Path(path).name}" in expected
    assert {"vgpa/__init__.py", "vgpa/_build_config.py", "vgpa/ops/__init__.py"} <= expected
    assert not any(p.startswith(("tests/", "vgpa_tools/", "kernels/", "bench/")) for p in expected)


def test_a_wheel_of_this_tree_passes_and_one_without_a_file_fails(tmp_path):
    """A real inspection (readelf, and cuobjdump when the module holds CUDA code, on the compiled
    module of this tree; no auditwheel: the wheel is not repaired) of a wheel assembled from the
    tree as setup.py lays it out, checked against the archs the module reports."""
    modules = glob.glob(str(REPO / "vgpa" / f"_C.cpython-{sys.version_info[0]}{sys.version_info[1]}*.so"))
    if not modules:
        pytest.fail("the compiled module vgpa/_C is not built in this tree")
    from vgpa import _backend

    ext = _backend.extension()
    archs = ext.cuda_archs() if ext.with_cuda() else None
    label = f"cu{ext.cuda_runtime_version() // 1000}{ext.cuda_runtime_version() % 1000 // 10}" if archs else "cpu"
    expected = iw.expected_python_files(REPO)

    def assemble(name, leave_out=()):
        wheel = tmp_path / f"vgpa-0.1.0+{label}-cp311-cp311-{name}.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for path in sorted(expected - set(leave_out)):
                source = path
                for package_path, folder in iw.BUILD.PACKAGE_DIRS.items():
                    if path.startswith(package_path + "/"):
                        source = folder + path[len(package_path):]
                zf.write(REPO / source, path)
            zf.write(modules[0], "vgpa/" + os.path.basename(modules[0]))
        return str(wheel)

    problems, findings = iw.inspect_wheel(assemble("linux_x86_64"), archs, emulation=False, auditwheel=False)
    assert problems == [], (problems, findings)
    assert any(("SASS " + archs if archs else "no CUDA device code") in f for f in findings), findings
    problems, _ = iw.inspect_wheel(assemble("linux_x86_64", ["vgpa/kernels/geometry.py"]), archs, emulation=False,
                                   auditwheel=False)
    assert problems == ["missing vgpa/kernels/geometry.py"]
