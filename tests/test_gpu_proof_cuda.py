"""The CUDA kernels' compiled code, checked without a GPU (docs/design.md 5;
vgpa_tools/gpu_proof/cuda_kernels.py): every csrc/*.cu compiled by nvcc with the build's flags for
sm_80 and sm_90.

- resource budget: no kernel spills or keeps a local-memory stack frame, and the committed
  table docs/gpu_resources_cuda.csv is what the sources compile to;
- decision paths: the PTX of the decision sources holds only explicitly rounded floating-point
  operations, and the same check flags the contracted multiply-adds of an --fmad=true build.

Needs nvcc, not a GPU. Skipped where nvcc is absent, except in CI (CI set), where that fails.
"""

import os

import pytest

from vgpa_tools.gpu_proof import cuda_kernels as ck
from vgpa_tools.gpu_proof.ptx import KernelResources, parse_ptxas_log

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def nvcc():
    path = ck.find_nvcc()
    if path is None:
        reason = "nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): the CUDA kernels' compiled code cannot be checked"
        if IN_CI:
            pytest.fail(f"{reason}; CI must have it", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def compilations(nvcc):
    """(as built, decision sources with --fmad=true): every source compiled once for all table
    archs with the build's flags, and the decision sources' PTX for the first arch with nvcc's
    default contraction; all compiled together, two processes at a time."""
    as_built = ck.build_compilations()
    contracted = ck.contracted_compilations(ck.table_archs()[0])
    results = ck.compile_all(as_built + contracted, nvcc)
    flat = lambda per_job: [c for cs in per_job for c in cs]  # noqa: E731
    return flat(results[:len(as_built)]), flat(results[len(as_built):])


@pytest.fixture(scope="module")
def as_built(compilations):
    return compilations[0]


@pytest.fixture(scope="module")
def with_fmad(compilations):
    return compilations[1]


def test_every_cuda_source_is_compiled_for_every_table_arch(as_built):
    compiled = {(c.source, c.arch) for c in as_built}
    sources = {job.source.name for job in ck.build_compilations()}
    assert {path.name for path in ck.decision_sources()} <= sources
    assert compiled == {(s, f"sm_{a}") for s in sources for a in ck.table_archs()}


def test_every_kernel_in_the_ptx_has_a_resource_report(as_built):
    for c in as_built:
        entries = set(ck._entry_headers(c.ptx))
        assert entries, f"{c.source} {c.arch}: no kernel in the PTX"
        assert {k.kernel for k in c.kernels} == entries, f"{c.source} {c.arch}: ptxas report and PTX disagree"


def test_no_kernel_spills_or_keeps_a_stack_frame(as_built):
    problems = ck.budget_problems(as_built)
    assert not problems, "resource budget broken:\n  " + "\n  ".join(problems)


def test_committed_resource_table_is_what_the_sources_compile_to(as_built, nvcc):
    version = ck.nvcc_version(nvcc)
    current = ck.table_text(ck.resource_rows(as_built, version))
    committed = ck.TABLE.read_text() if ck.TABLE.exists() else ""
    if committed != current:
        pytest.fail(f"{ck.TABLE.relative_to(ck.REPO)} differs from what the sources compile to with nvcc "
                    f"{version}; regenerate it with `python -m vgpa_tools.gpu_proof.cuda_kernels`:\n"
                    + ck.table_diff(committed, current), pytrace=False)


def test_decision_paths_hold_only_explicitly_rounded_float_ops(as_built):
    violations = ck.decision_path_violations(as_built)
    assert not violations, "forbidden floating-point instructions:\n" + ck.format_violations(violations)


def test_the_exempt_log_is_a_function_of_its_own_that_needs_the_exemption(as_built):
    # A stale exemption (the function renamed, inlined again, or clean) must not linger.
    for name, held in ck.exempt_functions_found(as_built).items():
        assert held, f"{name}: no such function with forbidden instructions in the decision sources' PTX"


def test_decision_path_check_flags_contracted_multiply_adds(with_fmad):
    """The proof that the check can fail: with nvcc's default --fmad=true, every decision source
    holds contracted multiply-adds outside the exempt function, and the check finds them."""
    violations = ck.decision_path_violations(with_fmad)
    flagged = {source for (source, _, _), bad in violations.items()
               if any(rule == "contracted multiply-add" for rule, _ in bad)}
    assert flagged == {path.name for path in ck.decision_sources()}


def test_the_decision_rule_is_opt_out_with_a_reason():
    """A new kernel source is a decision source unless it is declared otherwise; every exemption
    names a kernel source that exists and says why it decides nothing."""
    sources = {path.name for path in ck.cuda_sources()}
    assert ck.BUILD.is_decision_source("csrc/photometric_error.cu")
    for name, reason in ck.BUILD.NO_DECISION_SOURCES.items():
        assert name in sources and name not in ck.BUILD.CUDA_HOST_ONLY_SOURCES, f"stale exemption {name}"
        assert len(reason.split()) >= 5, f"{name}: say why it decides nothing"
        assert not ck.BUILD.is_decision_source(name)
    assert {path.name for path in ck.decision_sources()} == (
        sources - set(ck.BUILD.NO_DECISION_SOURCES) - set(ck.BUILD.CUDA_HOST_ONLY_SOURCES))
    assert len(ck.decision_sources()) >= 4


def test_build_flags_of_the_decision_sources_forbid_contraction():
    for source in ck.decision_sources():
        flags = ck.BUILD.nvcc_flags_for(str(source))
        assert "--fmad=false" in flags and "--use_fast_math" not in flags, source.name


# Checks of the readers themselves, on made-up ptxas output: no compiler needed.

_LOG_WITH_A_DEVICE_FUNCTION = """\
ptxas info    : Compiling entry function 'kernel_a' for 'sm_90'
ptxas info    : Function properties for kernel_a
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 32 bytes smem
ptxas info    : Function properties for helper
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function 'kernel_b' for 'sm_90'
ptxas info    : Function properties for kernel_b
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


def test_budget_flags_frames_and_spills_of_kernels_and_device_functions():
    kernels = parse_ptxas_log(_LOG_WITH_A_DEVICE_FUNCTION)
    assert [(k.kernel, k.registers, k.stack_frame, k.shared) for k in kernels] == [
        ("kernel_a", 64, 0, 32), ("kernel_b", 40, 8, 0)]  # helper's frame is not kernel_a's
    compiled = ck.CompiledSource("x.cu", "sm_90", "", _LOG_WITH_A_DEVICE_FUNCTION, kernels)
    problems = ck.budget_problems([compiled])
    assert len(problems) == 2
    assert any("kernel_b" in p and "8-byte local-memory stack frame" in p for p in problems)
    assert any("device function helper" in p and "16-byte stack frame" in p for p in problems)


@pytest.mark.parametrize("registers, shared, warps", [(32, 0, 64), (40, 0, 48), (64, 32, 32), (80, 0, 24),
                                                      (122, 32, 16), (128, 0, 16), (146, 64, 8)])
def test_resident_warps_follow_registers(registers, shared, warps):
    # Registers are given per warp in units of 256, 65536 per SM, 8 warps per 256-thread block.
    kernel = KernelResources("k", "sm_90", registers, 0, 0, 0, shared, 1)
    assert ck.resident_warps(kernel, threads=256) == warps


def test_kernel_names_read_as_the_source_writes_them():
    assert ck.kernel_label("void vgpa::(anonymous namespace)::render_points_resolve_kernel<float, vgpa::Half>"
                           "(vgpa::RenderPointsArgs)") == "render_points_resolve_kernel<float, Half>"
    assert ck.function_name("float vgpa::out_of_line_log<float>(float)") == "vgpa::out_of_line_log"


def test_a_several_arch_log_splits_into_one_report_per_arch():
    sm_80 = "ptxas info    : 0 bytes gmem\n" + _LOG_WITH_A_DEVICE_FUNCTION.replace("sm_90", "sm_80")
    sm_90 = "ptxas info    : 0 bytes gmem\n" + _LOG_WITH_A_DEVICE_FUNCTION
    assert ck._ptxas_report_per_arch(sm_90 + sm_80) == {"sm_80": sm_80, "sm_90": sm_90}
    interleaved = sm_90 + "ptxas info    : Compiling entry function 'kernel_c' for 'sm_80'\n"
    with pytest.raises(ck.CompileError, match="interleaved"):
        ck._ptxas_report_per_arch(interleaved)


def test_the_sanitizer_pass_runs_the_tests_of_every_compiled_op():
    """The sanitizer finds the ops (csrc/<op>.cpp) instead of listing them: every kernel source's
    op has its C++ twin and its tests in the pass."""
    from vgpa_tools.gpu_proof import sanitize

    selected = set(sanitize.tests())
    assert "tests/test_cuda_emulation.py" in selected
    for source in ck.cuda_sources():
        if source.name in ck.BUILD.CUDA_HOST_ONLY_SOURCES:
            continue
        op = source.stem
        assert (source.parent / f"{op}.cpp").exists(), f"{source.name} has no C++ twin {op}.cpp"
        assert f"tests/test_{op}.py" in selected, f"the sanitizer pass leaves out {op}"
