"""Scoring one video: from a geometry model's prediction in memory to its scores, for the two
prediction layouts VideoGPA reads (VGGT's dict, Depth Anything 3's ``Prediction``), with a
confidence map. LPIPS is off on both sides. Peers:

- "VideoGPA VideoProcessor (<layout>)": our statement of VideoGPA's post-processing as
  pipelines/process_video.py runs it after the model (its ``_process_vggt`` and
  ``_process_da3``), at its default ``conf_thres`` 0:
  - the prediction to float32 tensors (Depth Anything 3: its numpy arrays through
    ``torch.from_numpy(...).float()``, the images to [0, 1] floats);
  - the world points: VGGT's point head (``run_model_gpu`` stores ``world_points`` as
    ``world_points_from_depth``); Depth Anything 3's depth unprojected by its
    ``unproject_depth``: camera-from-world ``[R^T | -R^T t]``, ``K^-1 [u, v, 1] * depth``
    through an einsum over every pixel, then the camera-to-world einsum on homogeneous points;
  - the confidence filter of utils/pointcloud_utils.py ``get_colored_pointcloud``: colours
    ``images * 255``, keep the points whose confidence is finite and > 1e-5 (a top-k cut at
    thresholds above 0);
  - the render of utils/projection_utils.py ``batch_reproject`` (bench_render_points'
    restatement: per-frame sort and uint8 canvas), then metrics/mse.py's ``MSEMetric`` (both
    images to [0, 1] by their value range, ``.item()``); metrics/consistency_score.py's motion
    score (``acos`` of the relative rotations' trace); metrics/mvcs.py's ``MVCSMetric``
    (bench_reprojection_error's per-pair loop, whose ``.item()`` per pair and
    ``exp(-mean)`` it is).
  VideoGPA's VGGT path compares the render with the decoded frames at the video's resolution
  (bilinearly resizing the render); here both sides compare with the frames at the model's
  resolution, so that both score the same thing.
- vgpa: ``vgpa.geometry.from_vggt`` / ``from_depth_anything_3`` and ``vgpa.scoring.score_videos``
  with its default metrics (3DCS, MVCS, normal stability, reprojection, motion: two metrics
  more than the peer computes), with VideoGPA's cloud (VGGT: ``points="point_map"``) and its
  ties at the confidence cut (``conf_ties="all"``).

Both are checked against ``score_videos`` on vgpa's pure-PyTorch backend before they are timed:
vgpa's keys to float32 rounding; the peer's 3DCS within what its uint8 truncation allows, MVCS
to 1e-3 (its per-pair float32 inverses), and motion within the error of ``acos`` near 1 in
float32.

Each case also records a per-stage breakdown (``<op>_stages.csv``): the peer's stages as listed
above, and vgpa's as ``score_videos(timings=...)`` reports them, plus the conversion of the
prediction. The scene: a slanted textured plane seen by cameras that slide and turn, a depth
with 1% noise, a point head that disagrees with it by 2 cm, and a confidence in [1, 5) (VGGT's
is 1 + exp(x): at VideoGPA's threshold 0 the filter runs and keeps every point).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

import vgpa
from vgpa import geometry as vgeometry
from vgpa import scoring

from .bench_render_points import batch_reproject, videogpa_agree
from .bench_reprojection_error import per_pair_loop
from .harness import Entry, Impl, Size, assert_close
from .scenes import orbiting_cameras

LAYOUTS = ("VGGT", "DA3")
PEER_KEYS = ("3dcs", "mvcs", "motion_norm")


# --------------------------------------------------------------------------------------------
# The scene as each model's prediction


def _scene(frames, height, width, generator):
    """(depth (T, H, W), world points (T, H, W, 3) of the point head, confidence (T, H, W),
    images (T, 3, H, W) in k / 255, K (T, 3, 3) with VGGT's principal point, E (T, 4, 4))."""
    intrinsics, extrinsics = orbiting_cameras(1, frames, height, width)
    intrinsics, extrinsics = intrinsics[0].double(), extrinsics[0].double()
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = width / 2, height / 2
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(intrinsics).transpose(-1, -2)[:, None]
    rotation, translation = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    centre = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]  # (T, 3)
    direction = rays @ rotation[:, None]  # R^T d per pixel: (T, H, W, 3)
    normal, offset = torch.tensor([-0.3, 0.0, 1.0], dtype=torch.float64), 4.0  # the plane z = 4 + 0.3 x
    depth = (offset - centre @ normal)[:, None, None] / (direction @ normal)
    depth = depth * (1 + 0.01 * torch.randn(depth.shape, generator=generator, dtype=torch.float64))
    world = centre[:, None, None] + depth[..., None] * direction
    images = torch.stack([0.5 + 0.4 * torch.sin(3 * world[..., 0]), 0.5 + 0.4 * torch.cos(2 * world[..., 1]),
                          0.5 + 0.2 * torch.sin(world[..., 0] + world[..., 1])], 1)
    images = (images * 255).round() / 255
    world = world + 0.02 * torch.randn(world.shape, generator=generator, dtype=torch.float64)
    confidence = 1 + 4 * torch.rand(depth.shape, generator=generator, dtype=torch.float64)  # as VGGT's: >= 1
    return depth, world, confidence, images, intrinsics, extrinsics


def make_inputs(dims, device):
    """{layout: (prediction, the peer's inputs)}: VGGT's prediction dict (tensors with a batch of
    1 on the device, as VGGT returns them) and Depth Anything 3's fields (numpy arrays on the
    host, as its Prediction holds them)."""
    frames, height, width = dims
    generator = torch.Generator().manual_seed(0)
    depth, world, confidence, images, k, e = _scene(frames, height, width, generator)
    angle = torch.atan2(e[:, 0, 2], e[:, 0, 0])  # the cameras turn about y
    quaternion = torch.stack([torch.zeros_like(angle), (angle / 2).sin(), torch.zeros_like(angle),
                              (angle / 2).cos()], -1)
    fov = torch.stack([2 * torch.atan(height / 2 / k[:, 1, 1]), 2 * torch.atan(width / 2 / k[:, 0, 0])], -1)
    pose = torch.cat([e[:, :3, 3], quaternion, fov], -1)
    vggt = {"pose_enc": pose[None], "depth": depth[None, ..., None], "depth_conf": confidence[None],
            "world_points": world[None], "images": images[None]}
    vggt = {key: value.float().to(device) for key, value in vggt.items()}
    # what VideoGPA's run_model_gpu adds after the model: the cameras decoded from the pose encoding
    decoded = vgeometry.from_vggt(vggt)
    vggt_peer = {"world_points_from_depth": vggt["world_points"][0], "depth_conf": vggt["depth_conf"][0],
                 "images": vggt["images"][0], "extrinsic": decoded.extrinsics[:, :3],
                 "intrinsic": decoded.intrinsics, "depth": vggt["depth"][0],
                 "frames": decoded.frames.permute(0, 2, 3, 1).cpu().numpy()}  # the decoded frames, (T, H, W, 3) uint8
    da3 = {"depth": depth.float().numpy(), "conf": confidence.float().numpy(),
           "extrinsics": e[:, :3].float().numpy(), "intrinsics": k.float().numpy(),
           "processed_images": (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()}
    return {"VGGT": (vggt, vggt_peer), "DA3": (da3, da3)}


# --------------------------------------------------------------------------------------------
# VideoGPA's post-processing (module docstring), stage by stage


def _lap(clock, stage):
    if clock is not None:
        clock.lap(stage)


def videogpa_unproject(depth, intrinsics, extrinsics):
    """Depth Anything 3's unproject_depth as VideoGPA calls it: depth (T, H, W), K (T, 3, 3),
    world-to-camera (T, 3, 4) -> world points (T, H, W, 3)."""
    rotation_t = extrinsics[:, :3, :3].transpose(-1, -2)
    c2w = torch.cat([rotation_t, -rotation_t @ extrinsics[:, :3, 3:]], -1)[None]  # its affine_inverse
    height, width = depth.shape[-2:]
    x, y = torch.meshgrid(torch.arange(width, device=depth.device, dtype=torch.float32),
                          torch.arange(height, device=depth.device, dtype=torch.float32), indexing="xy")
    pixels = torch.stack((x, y), -1)
    pixels = torch.cat([pixels, torch.ones_like(pixels[..., :1])], -1)
    camera = torch.einsum("bvij,hwj->bvhwi", intrinsics[None].inverse(), pixels) * depth[None, ..., None]
    camera = torch.cat([camera, torch.ones_like(camera[..., :1])], -1)
    return torch.einsum("bvij,bvhwj->bvhwi", c2w, camera)[..., :3][0]


def videogpa_cloud(points, conf, images, conf_threshold=0):
    """get_colored_pointcloud: points (T, H, W, 3), conf (T, H, W), images (T, 3, H, W) in
    [0, 1] -> kept points (M, 3) and colours (M, 3) in [0, 255]."""
    vertices = points.reshape(-1, 3)
    colors = images.permute(0, 2, 3, 1).reshape(-1, 3) * 255
    values = conf.reshape(-1)
    mask = torch.isfinite(values) & (values > 1e-5)
    if conf_threshold > 0:
        count = mask.sum().item()
        if count:
            k = max(1, int(np.ceil(count * max(0.0, min(1.0, 1.0 - conf_threshold / 100.0)))))
            mask = mask & (values >= torch.topk(values[mask], k).values[-1])
    return vertices[mask], colors[mask]


def _to_unit_range(x):
    """MSEMetric's _to_tensor_01: (T, C, H, W) tensor or (T, H, W, 3) array to [0, 1] by its range."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(x).float()
        t = t.permute(0, 3, 1, 2) if t.shape[-1] == 3 else t
        return t / 255.0 if t.max() > 1.0 else t
    t = x.float()
    t = t.permute(0, 3, 1, 2) if t.shape[-1] == 3 else t
    if t.min() < 0:
        return (t + 1.0) / 2.0
    return t / 255.0 if t.max() > 1.0 else t


def videogpa_motion(extrinsics):
    """compute_motion_score_vectorized: mean translation step + 0.1 x mean acos angle."""
    e = extrinsics.float()
    rotations, translations = e[:, :3, :3], e[:, :3, 3]
    steps = torch.norm(translations[1:] - translations[:-1], dim=1).mean()
    relative = rotations[1:] @ rotations[:-1].transpose(-1, -2)
    angles = torch.acos(torch.clamp((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2, -1.0, 1.0))
    score = steps + 0.1 * angles.mean()
    return torch.tensor(0.0) if torch.isnan(score) else score


def videogpa_mvcs(depths, intrinsics, extrinsics):
    """MVCSMetric.compute: the 3 x 4 extrinsics completed to 4 x 4, then its per-pair loop."""
    steps = depths.shape[0]
    bottom = torch.tensor([0, 0, 0, 1], device=extrinsics.device, dtype=torch.float32).reshape(1, 1, 4)
    extrinsics = torch.cat([extrinsics.float(), bottom.expand(steps, 1, 4)], 1)
    errors = per_pair_loop(depths.float()[None], intrinsics.float()[None], extrinsics[None])[0]
    errors = errors[errors.isfinite()]  # the pairs with an empty mask are left out
    return 0.0 if errors.numel() == 0 else float(np.exp(-np.mean(errors.tolist())))


def videogpa_postprocess(layout, inputs, device, clock=None):
    """VideoGPA's post-processing of one prediction -> {"3dcs", "mvcs", "motion_norm"}."""
    if layout == "DA3":
        images = torch.from_numpy(inputs["processed_images"]).float().to(device)
        if images.max() > 1.0:
            images = images / 255.0
        images = images.permute(0, 3, 1, 2).contiguous()
        extrinsics = torch.from_numpy(inputs["extrinsics"]).float().to(device)
        intrinsics = torch.from_numpy(inputs["intrinsics"]).float().to(device)
        depths = torch.from_numpy(inputs["depth"]).float().to(device)
        confidence = torch.from_numpy(inputs["conf"]).float().to(device)
        _lap(clock, "prediction to tensors")
        points = videogpa_unproject(depths, intrinsics, extrinsics)
        _lap(clock, "unprojection")
        truth = images
    else:
        points, confidence, images = inputs["world_points_from_depth"], inputs["depth_conf"], inputs["images"]
        extrinsics, intrinsics, depths = inputs["extrinsic"], inputs["intrinsic"], inputs["depth"][..., 0]
        truth = inputs["frames"]
        _lap(clock, "prediction to tensors")
    vertices, colors = videogpa_cloud(points, confidence, images)
    _lap(clock, "confidence filter")
    height, width = images.shape[-2:]
    rendered = batch_reproject(vertices, colors, intrinsics, extrinsics, height, width)
    _lap(clock, "render")
    truth, rendered = _to_unit_range(truth).to(rendered.device), _to_unit_range(rendered)
    mse = float((truth - rendered).pow(2).mean().item())
    _lap(clock, "3dcs mse")
    motion = float(videogpa_motion(extrinsics))
    _lap(clock, "motion")
    mvcs = videogpa_mvcs(depths, intrinsics, extrinsics)
    _lap(clock, "mvcs")
    return {"3dcs": mse, "mvcs": mvcs, "motion_norm": motion}


# --------------------------------------------------------------------------------------------
# vgpa


def vgpa_geometry(layout, prediction):
    if layout == "VGGT":
        return vgeometry.from_vggt(prediction)
    return vgeometry.from_depth_anything_3(prediction)


def vgpa_score(layout, prediction, device, backend, timings=None):
    """score_videos with its default metrics on the prediction, with VideoGPA's cloud."""
    start = time.perf_counter()
    geometry = vgpa_geometry(layout, prediction)
    if timings is not None:
        timings["prediction to Geometry"] = time.perf_counter() - start
    return scoring.score_videos([geometry], points="point_map" if layout == "VGGT" else "depth", conf_ties="all",
                                device=device, backend=backend, timings=timings)[0]


# --------------------------------------------------------------------------------------------
# The entry


def reference(inputs):
    device = inputs["VGGT"][0]["depth"].device
    return {layout: vgpa_score(layout, inputs[layout][0], device, "torch") for layout in LAYOUTS}


def _vector(scores, keys):
    return torch.tensor([math.nan if scores[key] is None else scores[key] for key in keys], dtype=torch.float64)


def check_vgpa_scores(got: dict, want: dict, what: str):
    """vgpa's scores of one video (None for undefined, as `vgpa score` writes them) against the
    reference's: the same keys, equal to float32 rounding."""
    keys = sorted(want)
    if sorted(got) != keys:
        raise AssertionError(f"{what}: vgpa wrote keys {sorted(got)}, the reference {keys}")
    assert_close(_vector(got, keys), _vector(want, keys), rtol=1e-4, atol=1e-6, what=f"{what} scores {keys}")


def check_peer_scores(got: dict, want: dict, what: str):
    """VideoGPA's scores of one video against the reference's: 3DCS within what its uint8
    truncation allows (bench_render_points.videogpa_agree), MVCS to 1e-3 relative (it inverts K
    and the 4 x 4 poses in float32 for each pair: 1e-4 apart from vgpa's float64 cameras at
    128 x 128), motion within the error of acos near 1 in float32 (about 3e-4 rad a frame pair,
    times 0.1)."""
    videogpa_agree(torch.tensor([got["3dcs"]]), torch.tensor([want["3dcs"]]))
    assert_close(torch.tensor(got["mvcs"]), torch.tensor(want["mvcs"]), rtol=1e-3, atol=1e-6, what=f"{what} MVCS")
    assert_close(torch.tensor(got["motion_norm"]), torch.tensor(want["motion_norm"]), rtol=0, atol=1e-4,
                 what=f"{what} motion")


def vgpa_agree(layout):
    return lambda got, expected: check_vgpa_scores(got, expected[layout], layout)


def peer_agree(layout):
    return lambda got, expected: check_peer_scores(got, expected[layout], layout)


VIDEOGPA_SIZE = (10, 518, 518)  # VideoGPA's setting: 10 frames at 518 x 518


def sizes(device, quick):
    """(frames, height, width); x = pixels of the video. The default: VideoGPA's setting on a
    GPU; on the CPU 10 frames at 128 x 128, where the peer's 13 calls per case (check, warm-up,
    estimate, memory, 5 rounds, stage breakdown) fit the default run (at 518 x 518 one call of the
    peer takes 5 to 20 s there; --full times it). The quick CPU size, 4 frames at 96 x 96, keeps
    a smoke run short."""
    cpu = device.type != "cuda"
    if quick:
        dims = [(4, 96, 96)] if cpu else [VIDEOGPA_SIZE]
    else:
        dims = [(10, 128, 128), (10, 259, 259), VIDEOGPA_SIZE] if cpu else [(10, 259, 259), VIDEOGPA_SIZE]
    default = (10, 128, 128) if cpu else VIDEOGPA_SIZE
    return [Size(d, x=math.prod(d), default=not quick and d == default) for d in dims]


def _stages_of_peer(layout):
    def stages(inputs):
        device = inputs["VGGT"][0]["depth"].device

        def run():
            seconds = {}
            videogpa_postprocess(layout, inputs[layout][1], device, scoring.StageClock(seconds, device))
            return seconds
        return run
    return stages


def _stages_of_vgpa(layout, backend):
    def stages(inputs):
        device = inputs["VGGT"][0]["depth"].device

        def run():
            timings = {}
            vgpa_score(layout, inputs[layout][0], device, backend, timings)
            return timings
        return run
    return stages


def _peer(layout):
    return Impl(f"VideoGPA VideoProcessor ({layout})", agree=peer_agree(layout), stages=_stages_of_peer(layout),
                what=f"our statement of VideoGPA's post-processing of a {layout} prediction",
                make=lambda x, layout=layout: lambda: videogpa_postprocess(
                    layout, x[layout][1], x["VGGT"][0]["depth"].device))


def _vgpa(layout, backend):
    return Impl(f"vgpa[{backend}] ({layout})", peer=False, backend=backend, agree=vgpa_agree(layout),
                versus=(f"VideoGPA VideoProcessor ({layout})",), stages=_stages_of_vgpa(layout, backend),
                what=f"from_{'vggt' if layout == 'VGGT' else 'depth_anything_3'} + score_videos, default metrics",
                make=lambda x, layout=layout, b=backend: lambda: vgpa_score(
                    layout, x[layout][0], x["VGGT"][0]["depth"].device, b))


def _no_layout(got, expected):
    raise AssertionError("score_video: every implementation checks the scores of its own layout (Impl.agree)")


ENTRY = Entry(
    op="score_video",
    x_label="pixels of the video (frames x H x W)",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=_no_layout,
    baseline="VideoGPA VideoProcessor (VGGT)",
    impls=[*[_peer(layout) for layout in LAYOUTS],
           *[_vgpa(layout, b) for b in ("cuda", "triton", "cpu") for layout in LAYOUTS]],
)


def test_score_video(bench, case):
    bench(ENTRY, case)
