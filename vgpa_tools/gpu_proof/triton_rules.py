"""What the compiled Triton code must and must not hold (docs/design.md 5): the decision rule
(which kernels take discrete decisions, read from each op's spec in vgpa/ops/registry.py), the
narrow exemptions of values formed after every decision, the atomics a gradient scatter may use,
and the control compilations that show each check can fail.
"""

from __future__ import annotations

from dataclasses import replace

from vgpa.ops import registry

from .triton_variants import KERNEL_PACKAGE, Variant

def reprojection_log_code():
    from vgpa.kernels.reprojection_error import LOG

    return LOG


# Rules a decision kernel's variant may break, when the broken instructions only make a value
# after every decision is taken: kernel -> (constant, value, rules, why).
APPROXIMATE_VALUES = {
    "vgpa.kernels.reprojection_error:reprojection_error_forward_kernel": (
        "ERROR", reprojection_log_code, ("contracted multiply-add", "approximate reciprocal", "flush to zero"),
        "the 'log' error: libdevice's log (its fma.rn, and in float64 an rcp.approx.ftz seed that Newton steps "
        "refine) makes the error's value only; validity, occlusion and the error's finiteness are decided on z' and "
        "d themselves before it (kernels/reprojection_error.py _depth_score)"),
}


def exempt_rules(variant: Variant) -> tuple:
    entry = APPROXIMATE_VALUES.get(variant.kernel)
    if entry is None:
        return ()
    constant, value, rules, _ = entry
    return rules if variant.constant(constant) == value() else ()


def op_of(variant: Variant) -> registry.OpSpec:
    """The registered op whose kernels/<op>.py holds the variant's kernel (KeyError for a kernel
    module that is no op's)."""
    package, _, op = variant.module.rpartition(".")
    if package != KERNEL_PACKAGE:
        raise KeyError(f"{variant.kernel} is not a kernel of {KERNEL_PACKAGE}")
    return registry.spec(op)


def makes_decisions(variant: Variant) -> bool:
    """Every op's kernels take decisions unless its spec says why they take none (no_decisions)."""
    return op_of(variant).no_decisions is None


def unit_specialised(variant: Variant) -> Variant:
    """The variant a launch with every integer argument equal to 1 compiles to (Triton makes
    such arguments constants: code that treats them as tensors fails to compile)."""
    signature, constants = [], list(variant.constants)
    for name, ty in variant.signature:
        if ty in ("i32", "i64"):
            signature.append((name, "constexpr"))
            constants.append((name, 1))
        else:
            signature.append((name, ty))
    return replace(variant, signature=tuple(signature), constants=tuple(constants))


# What each control compilation must be flagged for (the result field that must not be empty).
CONTROL_FLAGS = {"contracted": "forbidden", "approximate": "forbidden", "ordered atomic": "ordered_atomics"}


def control_variants(variants: list[Variant]) -> dict[str, Variant]:
    """Compilations the checks must flag (CONTROL_FLAGS): a decision variant recompiled with FMA
    contraction, and the kernels of vgpa_tools/gpu_proof/triton_controls.py."""
    decision = next(v for v in variants if makes_decisions(v) and v.dtypes() == "fp32" and not exempt_rules(v))
    contracted = replace(decision, options=tuple(sorted({**dict(decision.options), "enable_fp_fusion": True}.items())))
    def control(name):
        return Variant(f"vgpa_tools.gpu_proof.triton_controls:{name}",
                       (("x_ptr", "*fp32"), ("y_ptr", "*fp32"), ("n", "i32"), ("BLOCK", "constexpr")),
                       (("BLOCK", 128),), ("x_ptr", "y_ptr"), (("enable_fp_fusion", False),))

    return {"contracted": contracted, "approximate": control("approximate_division_kernel"),
            "ordered atomic": control("ordered_atomic_kernel")}

