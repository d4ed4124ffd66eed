"""Probes of the reprojection_error op: reprojection_error, mvcs, unproject_depth."""

import torch

import vgpa
from vgpa.ops import reprojection_error as reprojection

from .common import Probe, backward, gradients, generator, probe_cameras, probe_depth


def _call_reprojection_error(rec, size, dtype, error, validity, occlusion_tol, return_map, grads, map_grad):
    depth = probe_depth(rec, size, dtype, "depth" in grads)
    image = None
    if error == "photometric":
        image = torch.rand(depth.shape[:2] + (3,) + depth.shape[2:], generator=generator()).to(dtype)
        rec.keep(image.requires_grad_("image" in grads))
    elif "image" in grads:
        return
    if map_grad and not return_map:
        return
    intrinsics, extrinsics = probe_cameras(rec, *depth.shape)
    result = vgpa.reprojection_error(depth, intrinsics, extrinsics, image=image, error=error, validity=validity,
                                     occlusion_tol=occlusion_tol, return_map=return_map, backend="triton")
    backward(result.error, result.error_map if map_grad else None)


def _call_mvcs(rec, size, dtype, grads):
    depth = probe_depth(rec, size, dtype, "depth" in grads)
    backward(reprojection.mvcs(depth, *probe_cameras(rec, *depth.shape), backend="triton"))


def _call_unproject_depth(rec, size, dtype, grads):
    depth = probe_depth(rec, size, dtype, "depth" in grads)
    backward(vgpa.unproject_depth(depth, *probe_cameras(rec, *depth.shape), backend="triton"))


def probes() -> list[Probe]:
    dtypes = tuple(reprojection.FLOAT_DTYPES)
    return [
        Probe(reprojection.reprojection_error, ("depth", "intrinsics", "extrinsics", "pairs", "image"),
              {"dtype": dtypes, "error": tuple(reprojection.ERROR_CODES),
               "validity": tuple(reprojection.VALIDITY_MODES),
               "occlusion_tol": (None, 0.1), "return_map": (False, True), "grads": gradients("depth", "image"),
               "map_grad": (False, True)},
              ("backend",), _call_reprojection_error),
        Probe(reprojection.mvcs, ("depth", "intrinsics", "extrinsics"), {"dtype": dtypes, "grads": gradients("depth")},
              ("backend",), _call_mvcs),
        Probe(reprojection.unproject_depth, ("depth", "intrinsics", "extrinsics"),
              {"dtype": dtypes, "grads": gradients("depth")}, ("backend",), _call_unproject_depth),
    ]
