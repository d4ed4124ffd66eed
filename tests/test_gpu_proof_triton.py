"""The Triton kernels proven for the GPU on the CPU (docs/design.md 5,
vgpa_tools/gpu_proof/triton_kernels.py and the modules it names): every variant the ops can
launch compiles for sm_80 and sm_90, within the resource budget, with rounded arithmetic on the
decision paths and relaxed atomics; plus the launch defects (device, grid limits, occlusion
tolerance type, int64 indices) tested on CPU tensors."""

import contextlib
import os

import pytest
import torch
import triton
import triton.language as tl

from vgpa_tools.gpu_proof import probes, triton_rules, triton_table, triton_variants
from vgpa_tools.gpu_proof import triton_kernels as proof_tool
from vgpa_tools.gpu_proof.ptx import parse_ptxas_log
from vgpa.kernels import _common
from vgpa.kernels.diffusion_dpo_loss import _segment_element_offsets
from vgpa.kernels.geometry import div_rn, scalar_as, sqrt_rn

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Where backend="triton" runs: CPU tensors under the interpreter, else the GPU (launches recorded)
DEVICE = "cpu" if INTERPRETED else "cuda"


@pytest.fixture(scope="module")
def proof():
    """Probe the ops, compile every variant for both archs (about three minutes on two cores)."""
    return proof_tool.prove()


# ---------------------------------------------------------------------------------------------
# Variants come from the launchers and cover every kernel


def test_every_triton_kernel_is_launched_by_the_probes(proof):
    assert triton_variants.triton_kernels(), "no @triton.jit kernel found in vgpa.kernels"
    assert proof.unrecorded_kernels() == []


def test_variants_do_not_follow_the_tensor_sizes(proof):
    assert set(proof.probe.variants) == set(probes.SIZES)
    assert proof.size_dependent_variants() == []


def test_every_parameter_of_every_op_with_a_backend_is_probed():
    every_probe = probes.probes()
    assert probes.ops_with_backends() <= probes.probed_functions(every_probe)
    for probe in every_probe:
        assert probes.unprobed_parameters(probe) == set(), probe.function.__name__


def test_recorded_launches_use_grid_axis_x_only(proof):
    assert proof.probe.grids
    assert [(name, grid) for name, grid in proof.probe.grids if len(grid) != 1] == []


# ---------------------------------------------------------------------------------------------
# Compilation, resources, decisions


def test_every_variant_compiles_for_sm80_and_sm90(proof):
    assert len(proof.results) == len(proof.variants) * len(triton_variants.ARCHS)
    assert proof.compile_errors() == []
    # every compilation was read: a lost ptxas log would pass the budget check vacuously
    unread = [v.describe() for (v, _), r in proof.results.items() if len(r["resources"]) != 1
              or r["resources"][0]["registers"] <= 0]
    assert unread == []


def test_no_variant_spills_or_has_a_stack_frame(proof):
    assert proof.budget_problems() == []


def test_budget_check_flags_a_spill():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "    80 bytes stack frame, 80 bytes spill stores, 80 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers\n")
    (kernel,) = parse_ptxas_log(log)
    assert kernel.problems()


def test_committed_table_matches_the_compiled_code(proof):
    current = triton_table.table_text(triton_table.resource_rows(proof))
    committed = triton_table.TABLE.read_text() if triton_table.TABLE.exists() else ""
    assert committed == current, ("docs/gpu_resources_triton.csv is stale; run python -m vgpa_tools.gpu_proof triton\n"
                                  + triton_table.table_diff(committed, current))


def test_decision_kernels_hold_only_rounded_arithmetic(proof):
    checked = [v for (v, _) in proof.results if triton_rules.makes_decisions(v)]
    assert {v.module for v in checked} >= {"vgpa.kernels.reprojection_error", "vgpa.kernels.normal_stability",
                                           "vgpa.kernels.render_points"}
    assert proof.decision_violations() == []


def test_exemptions_cover_only_the_log_error(proof):
    exempt = {v.describe() for (v, _) in proof.results if triton_rules.exempt_rules(v)}
    log = triton_rules.reprojection_log_code()
    assert exempt and all("ERROR=%d " % log in d for d in exempt)


def test_checks_flag_their_controls(proof):
    contracted, approximate = proof.controls["contracted"], proof.controls["approximate"]
    assert "contracted multiply-add" in contracted["forbidden"]
    assert {"approximate division", "approximate square root"} <= set(approximate["forbidden"])
    assert proof.controls["ordered atomic"]["ordered_atomics"]
    assert proof_tool.problems(proof).get("controls") is None


def test_gradient_scatters_use_relaxed_atomics(proof):
    scatters = [v.name for (v, _), r in proof.results.items() if r["atomics"]]
    assert "reprojection_error_backward_kernel" in scatters and "normal_stability_backward_kernel" in scatters
    assert proof.ordered_atomics() == []


def test_every_kernel_compiles_with_every_integer_argument_one(proof):
    # Triton turns an integer argument equal to 1 into a constant: `.to()` on it fails to compile
    assert set(proof.unit_specialised) == {v.kernel for v in proof.variants}
    assert [k for k, r in proof.unit_specialised.items() if r["error"]] == []


# ---------------------------------------------------------------------------------------------
# Launch defects, on CPU tensors


class _KernelStub:
    """Stands for a Triton kernel: records the CUDA device that is current when it is launched."""

    def __init__(self, current):
        self.current, self.launched_on = current, []

    def __getitem__(self, grid):
        return lambda *args, **options: self.launched_on.append(self.current[-1])


def test_launch_makes_the_tensors_device_current(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    current = ["cuda:0"]

    @contextlib.contextmanager
    def device(d):
        current.append(str(d))
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    kernel = _KernelStub(current)
    with FakeTensorMode(allow_non_fake_inputs=True):
        on_second_gpu = torch.empty(4, device="cuda:1")
    _common.launch(kernel, (1,), on_second_gpu, 3)
    _common.launch(kernel, (1,), torch.empty(4), 3)  # CPU tensors (the interpreter): no device switch
    assert kernel.launched_on == ["cuda:1", "cuda:0"]


def test_launch_refuses_a_grid_beyond_cuda_limits():
    kernel = _KernelStub(["cuda:0"])
    with pytest.raises(ValueError, match=r"grid axis y.*65535"):
        _common.check_grid(kernel, (1, 65536))
    with pytest.raises(ValueError, match=r"grid axis x.*2147483647"):
        _common.check_grid(kernel, (2**31,))


@pytest.mark.parametrize("op", ["unproject_depth", "depth_to_normals", "render_points", "diffusion_dpo_loss"])
def test_launches_of_more_than_65535_frames_or_rows_fold_into_grid_axis_x(op):
    import vgpa

    frames = 70_000
    torch.set_default_device(DEVICE)
    with triton_variants.recording() as recorder, contextlib.ExitStack() as restore:
        restore.callback(torch.set_default_device, None)
        if op == "unproject_depth":
            depth = torch.ones(1, frames, 1, 2)
            vgpa.unproject_depth(depth, torch.eye(3).expand(1, frames, 3, 3), torch.eye(4).expand(1, frames, 4, 4),
                                 backend="triton")
        elif op == "depth_to_normals":
            vgpa.depth_to_normals(torch.ones(frames, 3, 3), torch.eye(3), backend="triton")
        elif op == "render_points":
            videos = frames
            vgpa.render_points(torch.ones(videos, 1, 3), torch.ones(videos, 1, 1), torch.eye(3).expand(videos, 1, 3, 3),
                               torch.eye(4).expand(videos, 1, 4, 4), 1, 1, backend="triton")
        else:
            pred = torch.ones(2 * frames, 1, requires_grad=True)
            vgpa.diffusion_dpo_loss(pred, torch.ones(2 * frames, 1), torch.zeros(2 * frames, 1), beta=1.0,
                                    backend="triton").loss.backward()
    assert recorder.launches
    for launch in recorder.launches:
        assert len(launch.grid) == 1 and launch.grid[0] >= frames, (launch.variant.name, launch.grid)


@pytest.mark.parametrize("op", ["reprojection_error", "normal_stability"])
def test_float64_kernels_get_the_occlusion_tolerance_in_float64(op):
    import vgpa

    depth = 2 + torch.rand(1, 2, 5, 6, dtype=torch.float64, device=DEVICE)
    intrinsics = torch.tensor([[6.0, 0, 2.5], [0, 6.0, 2.0], [0, 0, 1]], dtype=torch.float64,
                              device=DEVICE).expand(1, 2, 3, 3)
    extrinsics = torch.eye(4, dtype=torch.float64, device=DEVICE).expand(1, 2, 4, 4)
    tol = 0.1
    with triton_variants.recording() as recorder:
        getattr(vgpa, op)(depth, intrinsics, extrinsics, occlusion_tol=tol, backend="triton")
    (launch,) = recorder.launches
    assert dict(launch.variant.signature)["occlusion_scale"] == "fp64"
    names = list(dict(launch.variant.signature))
    assert launch.args[names.index("occlusion_scale")] == 1.0 + tol  # formed in double, as on the CPU


@triton.jit
def offsets_kernel(e_ptr, out_ptr, A, B, C, sF, sA, sB, sC):
    e = tl.load(e_ptr + tl.arange(0, 4))
    tl.store(out_ptr + tl.arange(0, 4), _segment_element_offsets(e, 0, A, B, C, 0, sF, sA, sB, sC, 0, False))


@pytest.mark.skipif(not INTERPRETED, reason="runs the index helper on CPU tensors, in the Triton interpreter")
def test_dpo_element_offsets_are_int64_beyond_2_to_the_31():
    """A sample of 2^32 elements in four axes that cannot merge: B * C and A * B * C overflow int32."""
    a, b, c = 2048, 2048, 1024
    strides = (3 * a * b * c, 2 * b * c, 3 * c, 1)  # padded, so that no two axes merge
    elements = [a * b * c + 5, a * b * c - 1, b * c + 7, 2**31 + 3]
    out = torch.empty(4, dtype=torch.int64)
    offsets_kernel[(1,)](torch.tensor(elements), out, a, b, c, *strides)
    expected = []
    for e in elements:
        f, rem = divmod(e, a * b * c)
        ai, rem = divmod(rem, b * c)
        bi, ci = divmod(rem, c)
        expected.append(f * strides[0] + ai * strides[1] + bi * strides[2] + ci * strides[3])
    assert out.tolist() == expected


@triton.jit
def rounded_kernel(x_ptr, y_ptr, out_ptr, scale: tl.float64, ACC: tl.constexpr):
    i = tl.arange(0, 4)
    x = tl.load(x_ptr + i)
    y = tl.load(y_ptr + i)
    tl.store(out_ptr + i, div_rn(x, y))
    tl.store(out_ptr + 4 + i, sqrt_rn(x))
    tl.store(out_ptr + 8 + i, scalar_as(scale, ACC) * y)


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter's behaviour is what is tested")
def test_rounded_division_and_square_root_run_in_the_interpreter():
    for dtype, acc in ((torch.float32, tl.float32), (torch.float64, tl.float64)):
        x = torch.tensor([1.0, 2.0, 10.0, 1e-3], dtype=dtype)
        y = torch.tensor([3.0, 7.0, 9.0, 11.0], dtype=dtype)
        out = torch.empty(12, dtype=dtype)
        rounded_kernel[(1,)](x, y, out, 1.0 + 0.1, ACC=acc)
        assert torch.equal(out[:4], x / y) and torch.equal(out[4:8], x.sqrt())
        assert torch.equal(out[8:], torch.tensor(1.0 + 0.1, dtype=dtype) * y)  # 1 + tol rounded once
