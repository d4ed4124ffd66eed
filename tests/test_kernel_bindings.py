"""The compiled kernels take their arguments by name (csrc/bindings.h): a missing, unknown,
misplaced or malformed field is a TypeError naming the kernel and the field, raised before any
kernel runs. The calls here never give a complete set of fields, so no kernel is launched."""

import pytest

from vgpa import _backend

MODULES = {"vgpa._C": (_backend.extension, "_cpu"), "vgpa._C_cuda_emu": (_backend.emulation_module, "_cuda")}


def kernels(module, suffix):
    return sorted(name for name in dir(module) if name.endswith(suffix) and callable(getattr(module, name)))


@pytest.fixture(params=sorted(MODULES))
def compiled(request):
    load, suffix = MODULES[request.param]
    module = load()
    if module is None:
        pytest.skip(f"{request.param} is not built here")
    return module, suffix


def test_every_kernel_takes_named_fields(compiled):
    module, suffix = compiled
    names = kernels(module, suffix)
    assert len(names) >= 15, names
    for name in names:
        doc = getattr(module, name).__doc__ or ""
        assert "Keyword arguments only:" in doc, f"{name} does not take named fields"


def test_positional_arguments_are_refused(compiled):
    module, suffix = compiled
    with pytest.raises(TypeError):
        getattr(module, f"unproject_depth{suffix}")(0, [1, 2, 3, 4], 0, [1, 1, 1, 1], 0, 0)


def test_missing_field_is_named(compiled):
    module, suffix = compiled
    extra = {"stream": 0} if suffix == "_cuda" else {}
    with pytest.raises(TypeError, match=r"unproject_depth" + suffix + r": missing field '\w+'"):
        getattr(module, f"unproject_depth{suffix}")(dtype=0, height=4, **extra)


def test_unknown_or_misplaced_field_is_named(compiled):
    module, suffix = compiled
    extra = {"stream": 0} if suffix == "_cuda" else {}
    with pytest.raises(TypeError, match=r"reprojection_error_forward" + suffix + r": unexpected field 'depht'"):
        getattr(module, f"reprojection_error_forward{suffix}")(depht=1, **extra)
    # A field of the backward is not the forward's: a gradient buffer given to the forward fails.
    with pytest.raises(TypeError, match=r"unexpected field 'grad_depth'"):
        getattr(module, f"reprojection_error_forward{suffix}")(grad_depth=1, **extra)


def test_malformed_fields_are_named(compiled):
    module, suffix = compiled
    extra = {"stream": 0} if suffix == "_cuda" else {}
    kernel = getattr(module, f"unproject_depth{suffix}")
    with pytest.raises(TypeError, match=r"field 'depth_strides' takes 4 values, got 3"):
        kernel(depth_strides=[1, 2, 3], **extra)
    with pytest.raises(TypeError, match=r"field 'height' has the wrong type"):
        kernel(height=2.5, **extra)
    with pytest.raises(TypeError, match=r"field 'depth' has the wrong type"):
        kernel(depth=-1, **extra)  # an address is never negative
    dpo = getattr(module, f"diffusion_dpo_loss_forward{suffix}")
    with pytest.raises(TypeError, match=r"field 'sizes' takes 4 values"):
        dpo(sizes=[1, 2], **extra)
    with pytest.raises(TypeError, match=r"stride fields take 5 values, got 2"):
        dpo(model_strides=[1, 2], **extra)


def test_cuda_kernels_need_a_stream():
    module = _backend.emulation_module()
    if module is None:
        pytest.skip("vgpa._C_cuda_emu is not built here")
    with pytest.raises(TypeError, match=r"unproject_depth_cuda: missing field 'stream'"):
        module.unproject_depth_cuda(dtype=0)


def test_the_op_list_names_every_bindings_file():
    """VGPA_OPS (csrc/bindings.h), the one list both compiled modules bind, names exactly the ops
    that have a csrc/<op>_bindings.cpp."""
    import re
    from pathlib import Path

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    if not (csrc / "bindings.h").exists():
        pytest.skip("needs the source checkout")
    listed = re.findall(r"^\s*X\((\w+)\)", (csrc / "bindings.h").read_text(), flags=re.M)
    files = sorted(path.name[:-len("_bindings.cpp")] for path in csrc.glob("*_bindings.cpp"))
    assert sorted(listed) == files and len(listed) == len(set(listed))
