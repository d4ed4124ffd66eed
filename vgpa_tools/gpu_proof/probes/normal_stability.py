"""Probes of the normal_stability op: depth_to_normals, normal_stability."""

import vgpa
from vgpa.ops import normal_stability as normals

from .common import Probe, backward, gradients, probe_cameras, probe_depth


def _call_depth_to_normals(rec, size, dtype, grads):
    depth = probe_depth(rec, size, dtype, "depth" in grads)
    intrinsics, _ = probe_cameras(rec, *depth.shape)
    backward(vgpa.depth_to_normals(depth, intrinsics, backend="triton").normals)


def _call_normal_stability(rec, size, dtype, warp, occlusion_tol, return_map, grads, map_grad):
    if map_grad and not return_map:
        return
    depth = probe_depth(rec, size, dtype, "depth" in grads)
    intrinsics, extrinsics = probe_cameras(rec, *depth.shape)
    result = vgpa.normal_stability(depth, intrinsics, extrinsics, warp=warp, occlusion_tol=occlusion_tol,
                                   return_map=return_map, backend="triton")
    backward(result.error, result.error_map if map_grad else None)


def probes() -> list[Probe]:
    dtypes = tuple(normals.FLOAT_DTYPES)
    return [
        Probe(normals.depth_to_normals, ("depth", "intrinsics"), {"dtype": dtypes, "grads": gradients("depth")},
              ("backend",), _call_depth_to_normals),
        Probe(normals.normal_stability, ("depth", "intrinsics", "extrinsics", "pairs"),
              {"dtype": dtypes, "warp": (False, True), "occlusion_tol": (None, 0.1), "return_map": (False, True),
               "grads": gradients("depth"), "map_grad": (False, True)},
              ("backend",), _call_normal_stability),
    ]
