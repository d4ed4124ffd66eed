"""The build's arch rules (vgpa/_build_config.py): VGPA_CUDA_ARCHS parsing and resolution
against the nvcc's list, the gencode flags, the coverage of a GPU by a build (fake compute
capabilities: there is no GPU here), the driver table, the version label, the compile cache."""

import os
import stat
import sys

import pytest

from vgpa import _build_config as build

NVCC_13_0 = ["75", "80", "86", "87", "88", "89", "90", "100", "103", "110", "120", "121"]


@pytest.mark.parametrize("text, archs", [
    ("80;90", ["80", "90"]),
    ("8.0 9.0", ["80", "90"]),
    ("8.0,9.0", ["80", "90"]),
    ("sm_80;sm_90a", ["80", "90a"]),
    ("90a", ["90a"]),
    ("10.0 12.0", ["100", "120"]),
    ("90;80;90", ["90", "80"]),
    ("ampere", ["80", "86"]),
    ("ada;hopper", ["89", "90"]),
    ("blackwell", ["100", "120"]),
    ("hopper 80", ["90", "80"]),
    ("8.0 9.0+PTX", ["80", "90"]),
    ("default", ["80", "86", "89", "90", "100", "120"]),
    ("all", NVCC_13_0),
])
def test_arch_lists_read_numbers_names_default_and_all(text, archs):
    assert build.parse_cuda_archs(text, NVCC_13_0) == archs


def test_default_is_the_documented_list():
    assert build.DEFAULT_CUDA_ARCHS == "80;86;89;90;100;120"


@pytest.mark.parametrize("text", ["8", "foo", "8.10", "sm_8", "80b", "9.0.0", "1000.0"])
def test_unreadable_arch_is_an_error_naming_it(text):
    with pytest.raises(build.ArchError, match="cannot read architecture"):
        build.parse_cuda_archs(text, NVCC_13_0)


@pytest.mark.parametrize("text", ["", " ; ", ","])
def test_empty_arch_list_is_an_error(text):
    with pytest.raises(build.ArchError, match="names no architecture"):
        build.parse_cuda_archs(text, NVCC_13_0)


@pytest.mark.parametrize("text, bad", [("70;80", "sm_70"), ("800", "sm_800"), ("turing", "sm_75"),
                                       ("130", "sm_130"), ("100a", "sm_100a")])
def test_an_explicit_arch_the_nvcc_cannot_build_is_an_error_before_compiling(text, bad):
    supported = [a for a in NVCC_13_0 if a not in ("75", "100")]
    with pytest.raises(build.ArchError, match=bad) as info:
        build.parse_cuda_archs(text, supported)
    assert "80;86" in str(info.value)  # says what it can build


def test_default_and_all_drop_what_the_nvcc_cannot_build_and_say_which():
    older = ["75", "80", "86", "87", "89", "90"]  # an nvcc without Blackwell
    assert build.resolve_cuda_archs("default", older) == (["80", "86", "89", "90"], ["100", "120"])
    assert build.resolve_cuda_archs("all", older) == (older, [])
    with pytest.raises(build.ArchError, match="sm_100 .from 'blackwell'"):
        build.resolve_cuda_archs("blackwell", older)  # named explicitly: an error, never dropped
    with pytest.raises(build.ArchError, match="needs the nvcc"):
        build.parse_cuda_archs("all")
    with pytest.raises(build.ArchError, match="dropped: 80;86;89;90;100;120"):
        build.resolve_cuda_archs("default", ["75"])


def test_ptx_marks_only_the_newest_arch():
    with pytest.raises(build.ArchError, match=r"newest architecture only \(90\)"):
        build.parse_cuda_archs("80+PTX;90", NVCC_13_0)
    assert build.parse_cuda_archs("80;hopper+ptx", NVCC_13_0) == ["80", "90"]


def test_gencode_makes_sass_for_every_arch_and_ptx_for_the_newest():
    flags = build.gencode_flags(["90", "80", "120"])
    assert flags == ["-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_80,code=sm_80",
                     "-gencode=arch=compute_120,code=sm_120", "-gencode=arch=compute_120,code=compute_120"]


def test_ptx_of_an_arch_specific_newest_is_the_portable_one():
    # compute_90a PTX would JIT on 9.0 only; compute_90 runs on every newer GPU.
    assert build.ptx_arch(["80", "90a"]) == "90"
    assert build.gencode_flags(["80", "90a"])[-1] == "-gencode=arch=compute_90,code=compute_90"
    assert build.ptx_arch(["100", "90a"]) == "100"


def test_arch_report_defines_name_the_sass_and_the_ptx():
    assert build.arch_report_defines(["80", "90a"]) == ['-DVGPA_CUDA_SASS_ARCHS="80;90a"', '-DVGPA_CUDA_PTX_ARCH="90"']


def _fake_tool(tmp_path, name, output):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_nvcc_lists_and_version_are_read_from_its_output(tmp_path):
    listing = "compute_75\ncompute_80\ncompute_90\ncompute_100\ncompute_120\n"
    assert build.nvcc_archs(_fake_tool(tmp_path, "list", listing)) == ["75", "80", "90", "100", "120"]
    version = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.8, V12.8.93\n"
    assert build.nvcc_cuda_version(_fake_tool(tmp_path, "version", version)) == (12, 8)
    with pytest.raises(RuntimeError, match="cannot read the CUDA version"):
        build.nvcc_cuda_version(_fake_tool(tmp_path, "other", "something else\n"))


def test_local_version_label_and_driver_table():
    assert build.local_version_label((13, 0)) == "cu130"
    assert build.local_version_label((12, 8)) == "cu128"
    assert build.local_version_label(None) == "cpu"
    assert build.min_linux_driver((13, 0)).startswith("580.")
    assert build.min_linux_driver((12, 8)).startswith("570.")
    assert build.min_linux_driver((9, 0)) is None
    majors = [int(v.split(".")[0]) for _, v in sorted(build.MIN_LINUX_DRIVER.items())]
    assert majors == sorted(majors)  # a newer runtime never needs an older driver


# Coverage of a GPU by the default build (SASS 80;86;89;90;100;120, PTX 120), per CUDA's rules:
# SASS runs on the same major with a minor >= its own, PTX JITs on any capability >= its own.
DEFAULT_SASS = ["80", "86", "89", "90", "100", "120"]


@pytest.mark.parametrize("capability, kind, arch", [
    ((8, 0), "sass", "80"),
    ((8, 6), "sass", "86"),
    ((8, 7), "sass", "86"),      # Orin: the closest SASS of its major
    ((8, 9), "sass", "89"),
    ((9, 0), "sass", "90"),
    ((10, 0), "sass", "100"),
    ((10, 3), "sass", "100"),    # B300
    ((12, 0), "sass", "120"),
    ((12, 1), "sass", "120"),
    ((13, 0), "ptx", "120"),     # a future GPU: the PTX of the newest arch
    ((11, 0), "none", None),     # newer than sm_100's major, older than the compute_120 PTX
    ((7, 5), "none", None),
])
def test_default_build_covers_gpus_by_sass_then_ptx(capability, kind, arch):
    coverage = build.cuda_coverage(capability, DEFAULT_SASS, "120")
    assert (coverage.kind, coverage.arch) == (kind, arch)


def test_an_uncovered_gpu_gets_the_arch_to_build_for():
    coverage = build.cuda_coverage((7, 5), DEFAULT_SASS, "120")
    assert 'VGPA_CUDA_ARCHS="75"' in coverage.remedy
    assert "NOT covered" in coverage.describe((7, 5)) and "75" in coverage.describe((7, 5))


@pytest.mark.parametrize("sass, ptx, capability, kind", [
    (["80"], "80", (8, 6), "sass"),
    (["80"], "80", (9, 0), "ptx"),
    (["80"], "80", (12, 0), "ptx"),
    (["80"], "80", (7, 5), "none"),
    (["80"], None, (9, 0), "none"),
    (["90"], "90", (8, 9), "none"),          # neither SASS nor PTX runs on an older GPU
    (["90a"], "90", (9, 0), "sass"),         # arch-specific SASS: exactly its GPU
    (["90a"], "90", (10, 0), "ptx"),
    (["100a"], "100", (10, 3), "ptx"),       # sm_100a SASS is not for 10.3; compute_100 PTX is
])
def test_arch_specific_and_ptx_only_cases(sass, ptx, capability, kind):
    assert build.cuda_coverage(capability, sass, ptx).kind == kind


def test_sass_and_ptx_compatibility_rules():
    assert build.sass_runs_on("80", (8, 9)) and not build.sass_runs_on("86", (8, 0))
    assert not build.sass_runs_on("80", (9, 0))
    assert build.sass_runs_on("100f", (10, 3)) and not build.sass_runs_on("100a", (10, 3))
    assert build.ptx_runs_on("80", (13, 0)) and not build.ptx_runs_on("90", (8, 9))
    assert build.ptx_runs_on("90a", (9, 0)) and not build.ptx_runs_on("90a", (10, 0))


# ---------------------------------------------------------------------------------------------
# The compile cache, with a fake compiler that records its runs


@pytest.fixture
def fake_compiler(tmp_path):
    """A "compiler" that writes the source's text and its flags as the object, and counts its
    runs; with -M it lists the source and the header it includes."""
    runs = tmp_path / "runs"
    runs.write_text("")
    script = tmp_path / "fakecc"
    script.write_text(f"""#!{sys.executable}
import sys
args = sys.argv[1:]
src = [a for a in args if a.endswith('.src')][0]
header = src[:-4] + '.h'
if '-M' in args:
    print('x.o: ' + src + ' \\\\\\n  ' + header)
    sys.exit(0)
open({str(runs)!r}, 'a').write('run\\n')
obj = args[args.index('-o') + 1]
open(obj, 'w').write(open(src).read() + open(header).read() + ' '.join(a for a in args if a.startswith('-O')))
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "a.src").write_text("source 1\n")
    (tmp_path / "a.h").write_text("header 1\n")
    return str(script), tmp_path, lambda: len(runs.read_text().split())


def _compile(compiler, tmp_path, cache, flag="-O2", obj="a.o"):
    src = str(tmp_path / "a.src")
    obj = str(tmp_path / obj)
    hit = build.cached_compile([compiler, flag, src, "-o", obj], obj, [compiler, flag, src, "-M"], cache)
    return hit, open(obj).read()


def test_cache_reuses_an_object_of_the_same_source_headers_and_flags(fake_compiler):
    compiler, tmp_path, runs = fake_compiler
    cache = str(tmp_path / "cache")
    assert _compile(compiler, tmp_path, cache) == (False, "source 1\nheader 1\n-O2")
    assert _compile(compiler, tmp_path, cache, obj="b.o") == (True, "source 1\nheader 1\n-O2")
    assert runs() == 1
    (tmp_path / "a.h").write_text("header 2\n")             # a header changed
    assert _compile(compiler, tmp_path, cache) == (False, "source 1\nheader 2\n-O2")
    assert _compile(compiler, tmp_path, cache, flag="-O3") == (False, "source 1\nheader 2\n-O3")  # flags changed
    (tmp_path / "a.src").write_text("source 2\n")            # the source changed
    assert _compile(compiler, tmp_path, cache, flag="-O3") == (False, "source 2\nheader 2\n-O3")
    assert runs() == 4
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]  # no half-written entry


def test_cache_key_leaves_out_where_the_build_stands(fake_compiler, tmp_path_factory):
    """The same sources in another folder (pip's temporary build environment, an unpacked sdist,
    another clone), with include flags that name that folder: the object is reused. With debug
    info the paths stay in the key."""
    compiler, first, runs = fake_compiler
    cache = str(first / "cache")
    second = tmp_path_factory.mktemp("elsewhere")
    for name in ("a.src", "a.h"):
        (second / name).write_text((first / name).read_text())

    def compile_in(folder, *flags):
        src, obj = str(folder / "a.src"), str(folder / "a.o")
        command = [compiler, "-O2", f"-I{folder}", *flags, src, "-o", obj]
        return build.cached_compile(command, obj, command[:-2] + ["-M"], cache)

    assert compile_in(first) is False
    assert compile_in(second) is True
    assert runs() == 1
    assert compile_in(first, "-g") is False
    assert compile_in(second, "-g") is False       # debug info records the paths
    assert runs() == 3
    (second / "a.h").write_text("header 2\n")      # same names, other content: compiled afresh
    assert compile_in(second) is False
    assert runs() == 4


def test_cache_key_command_drops_paths_but_keeps_flags(tmp_path):
    src = tmp_path / "x.cpp"
    src.write_text("")
    key = build.cache_key_command(["/usr/bin/g++", "-O3", f"-I{tmp_path}", "-Icsrc", "-DVGPA_WITH_CUDA=1",
                                   "-std=c++17", str(src), "-o", str(tmp_path / "x.o")], str(tmp_path / "x.o"))
    assert key == ["-O3", "-I<path>", "-I<path>", "-DVGPA_WITH_CUDA=1", "-std=c++17", "<path>", "-o", "<obj>"]
    # pybind11's -g0 is no debug info; a later -g is
    assert build.cache_key_command(["g++", "-g0", f"-I{tmp_path}"], "x.o") == ["-g0", "-I<path>"]
    assert build.cache_key_command(["g++", "-g0", "-g", f"-I{tmp_path}"], "x.o") == ["-g0", "-g", f"-I{tmp_path}"]


def test_cache_off_always_compiles(fake_compiler):
    compiler, tmp_path, runs = fake_compiler
    assert _compile(compiler, tmp_path, None) == (False, "source 1\nheader 1\n-O2")
    assert _compile(compiler, tmp_path, None) == (False, "source 1\nheader 1\n-O2")
    assert runs() == 2


def test_cache_dir_default_override_and_off():
    assert build.cache_dir({}) == os.path.expanduser("~/.cache/vgpa/build")
    assert build.cache_dir({"VGPA_BUILD_CACHE": "/tmp/x"}) == "/tmp/x"
    assert build.cache_dir({"VGPA_BUILD_CACHE": "off"}) is None


def test_the_sanitizer_builds_the_simd_clone_this_cpu_runs():
    v3 = "avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
    v4 = v3 + " avx512f avx512bw avx512cd avx512dq avx512vl"
    assert build.running_simd_clone(f"processor\t: 0\nflags\t\t: fpu sse2 {v4}\n") == "x86-64-v4"
    assert build.running_simd_clone(f"flags\t\t: fpu sse2 {v3} avx512f\n") == "x86-64-v3"
    assert build.running_simd_clone("flags\t\t: fpu sse2 avx\n") is None
    assert build.running_simd_clone("") is None
    flags = build.sanitizer_flags()
    assert flags[:len(build.SANITIZER_FLAGS)] == build.SANITIZER_FLAGS and "-DVGPA_CPU_SIMD_ONE_CLONE" in flags
    level = build.running_simd_clone()
    assert (f"-march={level}" in flags) if level else not any(f.startswith("-march") for f in flags)
