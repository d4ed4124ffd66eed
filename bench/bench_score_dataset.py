"""Scoring a dataset: `vgpa score` over groups of generated videos with their geometry files
(decode, load, score, write), in videos per second, with the share of each stage.

The dataset (written once per size, outside the timing): groups of videos as a video model
writes them (VideoGPA's CogVideoX-5B: 49 frames at 720 x 480, MPEG-4; smaller sizes: 12 frames
at 1.5 x the side) and, per video, the geometry file a geometry model would have written for its
frames sampled and prepared as VideoGPA does (bench_score_video's scene, Depth Anything 3's
layout, with a confidence and the frames). Every call scores into a new output.

- "vgpa score": the command itself (``score_command.run``), default metrics; a thread decodes
  and loads the next group while the current one is scored, and the videos of a group are
  stacked. Its stage breakdown is the command's own (``run(..., timings=...)``): "decode" and
  "load" (the reading thread), "score", "write" and "waiting for the reader" (the scoring thread),
  and "wall"; shares are of the wall time, so the overlapped stages add up to more than 1.
- "VideoGPA loop" (peer, at the smaller sizes only: at 518 x 518 its post-processing takes
  5 to 20 s a video on the CPU): our statement of VideoGPA's scorer (replicate_scorer.py) on
  the same files: one video after the other, decode (vgpa.video.read_video: the same sampling
  and preparation as its sample_uniform_frames, which decodes with decord), load the geometry
  file, bench_score_video's statement of its post-processing, and one JSON at the end.

Both are checked against ``score_videos`` on the same files, one video at a time (the
pure-PyTorch backend would take longer than the run at 518 x 518; score_video checks the ops
against it): vgpa's scores to float32 rounding, the peer's within bench_score_video's bounds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vgpa import score_command, scoring
from vgpa.geometry import Geometry, load_geometry
from vgpa.video import read_video, write_video

from . import bench_score_video as video_entry
from .harness import Entry, Impl, Size

STAGES = ("decode", "load", "score", "write", "waiting for the reader", "wall")


@dataclass
class Dataset:
    folder: tempfile.TemporaryDirectory  # removed with the inputs
    groups_file: Path
    frames: int
    size: int

    @property
    def root(self) -> Path:
        return Path(self.folder.name)

    def arguments(self, out: Path) -> list:
        return [str(self.groups_file), "--geometry", str(self.root / "geometry"), "--out", str(out),
                "--num-frames", str(self.frames), "--size", str(self.size), "--no-progress"]

    def videos(self) -> list:
        """(video_path as the groups file holds it, its geometry file) of every video, in order."""
        groups = json.loads(self.groups_file.read_text())["groups"]
        return [(v["video_path"], self.root / "geometry" / f"{Path(v['video_path']).stem}.npz")
                for g in groups for v in g["videos"]]


def source_shape(size: int) -> tuple:
    """(frames, height, width) of the generated video files: even sides, as mp4 (mp4v) stores them."""
    def even(n):
        return n + n % 2

    return (49, 480, 720) if size >= 518 else (12, even(size), even(size * 3 // 2))


def write_dataset(root: Path, groups: int, videos: int, frames: int, size: int) -> Path:
    """The groups file of ``groups`` x ``videos`` videos under root (videos/, geometry/)."""
    count, height, width = source_shape(size)
    _, da3 = video_entry.make_inputs((frames, size, size), torch.device("cpu"))["DA3"]
    steps = torch.arange(count, dtype=torch.float32)
    rows, columns = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    listing = []
    for g in range(groups):
        entries = []
        for v in range(videos):
            name = f"g{g}_v{v}"
            shift = steps[:, None, None] * (2 + v) + 7 * g  # stripes moving sideways: cheap to encode
            red = 127 + 100 * torch.sin((columns + shift) / 23)
            green = 127 + 100 * torch.cos((rows[:, None] + 0.5 * shift) / 31).expand(-1, -1, width)
            blue = (127 + 60 * torch.sin((rows[:, None] + columns + shift) / 47))
            clip = torch.stack([red.expand(count, height, width), green.expand(count, height, width),
                                blue.expand(count, height, width)], 1).round().to(torch.uint8)
            write_video(root / "videos" / f"{name}.mp4", clip)
            Geometry(depth=torch.from_numpy(da3["depth"]) * (1 + 0.001 * (g * videos + v)),
                     confidence=torch.from_numpy(da3["conf"]), intrinsics=torch.from_numpy(da3["intrinsics"]),
                     extrinsics=torch.from_numpy(da3["extrinsics"]),
                     frames=torch.from_numpy(da3["processed_images"]).permute(0, 3, 1, 2)
                     ).save(root / "geometry" / f"{name}.npz")
            entries.append({"video_path": f"videos/{name}.mp4"})
        listing.append({"group_id": f"g{g}", "prompt": f"prompt {g}", "videos": entries})
    path = root / "groups.json"
    path.write_text(json.dumps({"groups": listing}))
    return path


def make_inputs(dims, device):
    groups, videos, frames, size = dims
    folder = tempfile.TemporaryDirectory(prefix="vgpa-bench-dataset-")
    return Dataset(folder, write_dataset(Path(folder.name), groups, videos, frames, size), frames, size)


# --------------------------------------------------------------------------------------------
# The two pipelines


def vgpa_score(dataset: Dataset, timings=None) -> dict:
    """{video_path: scores} as `vgpa score` writes them, into a new output."""
    with tempfile.TemporaryDirectory(prefix="vgpa-bench-out-") as out_dir:
        out = Path(out_dir) / "meta_data.json"
        args = score_command.build_parser().parse_args(dataset.arguments(out))
        with contextlib.redirect_stdout(io.StringIO()):  # the summary
            code = score_command.run(args, timings=timings)
        if code != 0:
            raise AssertionError(f"vgpa score exited with {code}")
        groups = json.loads(out.read_text())["groups"]
    return {v["video_path"]: {key: v[key] for key in score_command.SCORE_FIELDS if key in v}
            for g in groups for v in g["videos"]}


def videogpa_loop(dataset: Dataset, timings=None) -> dict:
    """{video_path: VideoGPA's scores}, one video after the other (module docstring)."""
    clock = scoring.StageClock({} if timings is None else timings, torch.device("cpu"))
    start, results = time.perf_counter(), {}
    for video_path, geometry_file in dataset.videos():
        read_video(dataset.root / video_path, dataset.frames, size=dataset.size)
        clock.lap("decode")
        geometry = load_geometry(geometry_file)
        prediction = {"depth": geometry.depth.numpy(), "conf": geometry.confidence.numpy(),
                      "extrinsics": geometry.extrinsics[:, :3].numpy(), "intrinsics": geometry.intrinsics.numpy(),
                      "processed_images": geometry.frames.permute(0, 2, 3, 1).numpy()}
        clock.lap("load")
        results[video_path] = video_entry.videogpa_postprocess("DA3", prediction, torch.device("cpu"))
        clock.lap("score")
    with tempfile.TemporaryDirectory(prefix="vgpa-bench-out-") as out_dir:
        (Path(out_dir) / "scores.json").write_text(json.dumps(results, indent=2))
    clock.lap("write")
    if timings is not None:
        timings["wall"] = time.perf_counter() - start
    return results


def reference(dataset: Dataset) -> dict:
    """score_videos on the geometry files, one video at a time, on the default backend: what the
    command must write (the ops themselves are checked against the pure-PyTorch backend by
    their own entries and by score_video)."""
    videos = dataset.videos()
    scores = [scoring.score_videos([load_geometry(file)])[0] for _, file in videos]
    return {path: {key: None if not math.isfinite(value) else value for key, value in score.items()}
            for (path, _), score in zip(videos, scores)}


def _agree(check):
    def agree(got, expected):
        if sorted(got) != sorted(expected):
            raise AssertionError(f"scored videos {sorted(got)}, expected {sorted(expected)}")
        for path, want in expected.items():
            check(got[path], want, path)
    return agree


def _stages(run):
    def stages(dataset):
        def call():
            timings = {}
            run(dataset, timings)
            return {stage: timings[stage] for stage in STAGES if stage in timings}
        return call
    return stages


def sizes(device, quick):
    """(groups, videos per group, frames, size); x = pixels scored. The default: 2 groups of 2
    videos at VideoGPA's setting (10 frames at 518 x 518, from 49-frame 720 x 480 files)."""
    if quick and device.type != "cuda":
        dims = [(2, 1, 4, 64)]
    elif quick:
        dims = [(2, 2, 10, 518)]
    else:
        dims = [(2, 2, 10, 128), (2, 2, 10, 259), (2, 2, 10, 518)]
    return [Size(d, x=math.prod(d) * d[3], default=not quick and d[3] == 518) for d in dims]


ENTRY = Entry(
    op="score_dataset",
    x_label="pixels scored (videos x frames x H x W)",
    sizes=sizes,
    make_inputs=make_inputs,
    reference=reference,
    agree=_agree(video_entry.check_vgpa_scores),
    baseline="VideoGPA loop",
    impls=[
        Impl("VideoGPA loop", what="our statement of VideoGPA's scorer loop (decode, load, post-process, one JSON)",
             make=lambda x: lambda: videogpa_loop(x), agree=_agree(video_entry.check_peer_scores),
             stages=_stages(videogpa_loop), at_size=lambda size: size.dims[3] <= 128),
        Impl("vgpa score", peer=False, what="vgpa score with geometry files, default metrics, prefetching reader",
             make=lambda x: lambda: vgpa_score(x), stages=_stages(vgpa_score)),
    ],
)


def test_score_dataset(bench, case):
    bench(ENTRY, case)
