"""Probes of the render_points op: render_points, render_consistency (its point_cloud module
launches nothing of its own)."""

import torch

import vgpa
from vgpa.ops import render_points as render

from .common import BATCH, FRAMES, SIZES, Probe, generator, probe_cameras


def _cloud(rec, size, point_dtype, color_dtype):
    count = SIZES[size]["points"]
    points = torch.randn(BATCH, count, 3, generator=generator()) * 0.5
    points[..., 2] += 3
    colors = torch.rand(BATCH, count, 3, generator=generator())
    return rec.keep(points.to(point_dtype)), rec.keep(colors.to(color_dtype))


def _call_render_points(rec, size, point_dtype, color_dtype):
    points, colors = _cloud(rec, size, point_dtype, color_dtype)
    height, width = SIZES[size]["frame"]
    intrinsics, extrinsics = probe_cameras(rec, BATCH, FRAMES, height, width)
    vgpa.render_points(points, colors, intrinsics, extrinsics, height, width, backend="triton")


def _call_render_consistency(rec, size, point_dtype, color_dtype, frame_dtype, masked):
    points, colors = _cloud(rec, size, point_dtype, color_dtype)
    height, width = SIZES[size]["frame"]
    intrinsics, extrinsics = probe_cameras(rec, BATCH, FRAMES, height, width)
    frames = rec.keep(torch.rand(BATCH, FRAMES, 3, height, width, generator=generator()).to(frame_dtype))
    vgpa.render_consistency(points, colors, intrinsics, extrinsics, frames, masked=masked, backend="triton")


def probes() -> list[Probe]:
    return [
        Probe(render.render_points, ("points", "colors", "intrinsics", "extrinsics", "height", "width", "counts"),
              {"point_dtype": render.POINT_DTYPES, "color_dtype": render.COLOR_DTYPES},
              ("background", "backend"), _call_render_points),
        Probe(render.render_consistency, ("points", "colors", "intrinsics", "extrinsics", "frames", "counts"),
              {"point_dtype": render.POINT_DTYPES, "color_dtype": render.COLOR_DTYPES,
               "frame_dtype": render.COLOR_DTYPES, "masked": (False, True)},
              ("background", "backend"), _call_render_consistency),
    ]
