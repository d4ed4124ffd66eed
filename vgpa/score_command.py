"""`vgpa score`: from generated videos and their geometry to VideoGPA's scored groups file
(meta_data.json), the file examples/train_dpo.py and vgpa.training read (DESIGN 3.7).

The output holds every input group with every video entry as it was, plus its scores (or an
``error`` when it could not be scored). It is rewritten atomically after each group, so an
interrupted run loses nothing and a rerun with the same --out scores only what is missing.
Under torchrun / accelerate launch (WORLD_SIZE > 1) group k goes to rank k % WORLD_SIZE and the
main process writes the merged file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import scoring
from .geometry import POINT_SOURCES
from .reference.render_points import CONF_TIES

PROVIDERS = {
    # --geometry NAME: (module with the model class, install command)
    "vggt": ("vggt", "pip install git+https://github.com/facebookresearch/vggt"),
    "da3": ("depth_anything_3", "pip install depth-anything-3"),
}
ERROR_KEY = "error"
# Every key a metric may write; a video's previous scores are these keys.
SCORE_FIELDS = tuple(dict.fromkeys(key for metric in scoring.METRICS.values() for key in metric.keys))
REQUIRED_METRICS = ("3dcs", "motion")  # what the trainer ranks by and filters by
# The keys the pair selection reads: a video with one of them undefined is not ranked.
PAIRING_KEYS = (scoring.SCORE_KEY, scoring.MOTION_KEY)


class InputFileError(ValueError):
    """The input or output groups file is not what `vgpa score` can use; the message names the
    file, the group and the field."""


# --------------------------------------------------------------------------------------------
# Groups files


def load_groups(path: Path) -> list:
    """The groups of a VideoGPA groups file ({"groups": [...]} or a bare list of groups), checked:
    each group an object with a unique ``group_id`` (str or int) and a non-empty ``videos``
    list of objects with a non-empty ``video_path`` string, unique within the group."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from exc
    groups = content.get("groups") if isinstance(content, dict) else content
    if not isinstance(groups, list):
        raise InputFileError(f"{path}: expected VideoGPA's groups format, {{\"groups\": [...]}} or a list of groups")
    seen = set()
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            raise InputFileError(f"{path}: group {index} is a {type(group).__name__}, not an object")
        group_id = group.get("group_id")
        if isinstance(group_id, bool) or not isinstance(group_id, (str, int)):
            raise InputFileError(f"{path}: group {index} needs a 'group_id' (a string or an int), got {group_id!r}")
        if group_id in seen:
            raise InputFileError(f"{path}: group_id {group_id!r} appears twice; group ids must be unique")
        seen.add(group_id)
        videos = group.get("videos")
        if not isinstance(videos, list) or not videos:
            raise InputFileError(f"{path}: group {group_id!r} has no videos (its 'videos' must be a non-empty list)")
        paths = set()
        for position, video in enumerate(videos):
            where = f"{path}: group {group_id!r} video {position}"
            if not isinstance(video, dict):
                raise InputFileError(f"{where} is a {type(video).__name__}, not an object")
            video_path = video.get("video_path")
            if not isinstance(video_path, str) or not video_path:
                raise InputFileError(f"{where} has no 'video_path' (a non-empty string), got {video_path!r}")
            if video_path in paths:
                raise InputFileError(f"{where}: video_path {video_path!r} appears twice in the group")
            paths.add(video_path)
    return groups


def previous_results(out: Path, groups: list) -> dict:
    """{(group_id, video_path): video entry} of the videos already scored in ``out`` (a finite
    consistency_score and no error). An output holding a group the input lacks is refused, so
    that a run never overwrites the results of another dataset."""
    if not out.exists():
        return {}
    previous = load_groups(out)
    known = {group["group_id"] for group in groups}
    foreign = [group["group_id"] for group in previous if group["group_id"] not in known]
    if foreign:
        raise InputFileError(f"{out}: holds group(s) {foreign[:3]} that the input does not; it is the output of "
                             "another dataset: choose another --out")
    done = {}
    for group in previous:
        for video in group["videos"]:
            score = video.get(scoring.SCORE_KEY)
            if ERROR_KEY not in video and isinstance(score, (int, float)) and not isinstance(score, bool) \
                    and math.isfinite(score):
                done[(group["group_id"], video["video_path"])] = video
    return done


def write_atomically(path: Path, content) -> None:
    """Writes JSON to a temporary file in the same folder, then renames it over ``path``:
    a reader (or an interrupted run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(content, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------------------------
# Geometry sources


def load_geometry_model(name: str, model_path: Optional[str], device: torch.device):
    """The provider of ``--geometry vggt|da3`` with its model loaded from a local checkpoint,
    ``--model-path``: a folder written by the model's save_pretrained (or downloaded once with
    ``huggingface-cli download``), or for VGGT also a .pt/.pth/.safetensors state dict. A hub id
    is refused: weights are never downloaded implicitly."""
    module_name, install = PROVIDERS[name]
    try:
        __import__(module_name)
    except ImportError as exc:
        raise SystemExit(f"vgpa score: --geometry {name} needs the {module_name} package ({exc}); install it with "
                         f"`{install}`, or pass --geometry DIR with precomputed geometry files") from exc
    if model_path is None:
        raise SystemExit(f"vgpa score: --geometry {name} needs --model-path, a local checkpoint; weights are never "
                         "downloaded (fetch them once, e.g. with `huggingface-cli download`, and pass the folder)")
    path = Path(model_path)
    if not path.exists():
        raise SystemExit(f"vgpa score: --model-path {path} does not exist (a local checkpoint folder or file; "
                         "weights are never downloaded)")
    from . import geometry

    if name == "da3":
        if not path.is_dir():
            raise SystemExit(f"vgpa score: --geometry da3 takes a checkpoint folder as --model-path, got {path}")
        return geometry.DepthAnything3Provider.from_pretrained(str(path), device=device)
    if path.is_dir():
        return geometry.VGGTProvider.from_pretrained(str(path), device=device)
    from vggt.models.vggt import VGGT

    model = VGGT()
    model.load_state_dict(_load_state_dict(path))
    return geometry.VGGTProvider(model.to(device).eval(), device=device)


def _load_state_dict(path: Path):
    if path.suffix == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class Source:
    """Where a video's frames and geometry come from."""

    root: Path  # relative video paths resolve against the input file's folder
    num_frames: int
    size: int
    geometry_dir: Optional[Path] = None
    provider: Optional[object] = None

    def video_file(self, video_path: str) -> Path:
        path = Path(video_path)
        return path if path.is_absolute() else self.root / path

    def geometry_file(self, video_path: str) -> Path:
        from .geometry import geometry_path_for

        return Path(geometry_path_for(self.video_file(video_path), self.geometry_dir))

    def load(self, video_path: str):
        """(frames (T, 3, H, W) uint8 at the geometry's resolution, geometry); raises with the
        reason when the video or its geometry cannot be used. The frames are the geometry's own
        (the frames it was computed from) when it holds them, else the ones read from the video."""
        from .video import read_video

        file = self.video_file(video_path)
        if self.geometry_dir is not None:  # check the geometry first: no decode for a video without one
            from .geometry import load_geometry

            geometry_file = self.geometry_file(video_path)
            if not geometry_file.is_file():
                raise FileNotFoundError(f"no geometry file {geometry_file}")
            geometry = load_geometry(geometry_file)
            frames = read_video(file, self.num_frames, size=self.size)
        else:
            frames = read_video(file, self.num_frames, size=self.size)
            geometry = self.provider(frames)
        steps, height, width = geometry.depth.shape
        if steps != frames.shape[0]:
            raise ValueError(f"the geometry has {steps} frames but {frames.shape[0]} were read from the video "
                             f"(--num-frames {self.num_frames}); they must be the same frames")
        if geometry.frames is not None:
            return geometry.frames, geometry
        if (height, width) != tuple(frames.shape[-2:]):
            raise ValueError(f"the geometry is {height} x {width} but the frames read are {frames.shape[-2]} x "
                             f"{frames.shape[-1]} (--size {self.size}) and the geometry holds no frames of its own")
        return frames, geometry


# --------------------------------------------------------------------------------------------
# Scoring one group


@dataclass
class Counts:
    scored: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list = field(default_factory=list)  # (group_id, video_path, error)

    def add(self, other: "Counts") -> None:
        self.scored += other.scored
        self.skipped += other.skipped
        self.failed += other.failed
        self.failures += other.failures


def _clean(video: dict) -> dict:
    """The input entry without scores or an error from an earlier run."""
    return {key: value for key, value in video.items() if key not in SCORE_FIELDS and key != ERROR_KEY}


def _with_previous(video: dict, previous: Optional[dict]) -> dict:
    """The input entry with the scores ``previous`` (its entry in the output being resumed) holds."""
    entry = _clean(video)
    if previous is not None:
        entry.update({key: previous[key] for key in SCORE_FIELDS if key in previous})
    return entry


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def score_group(group: dict, done: dict, source: Source, options: dict, progress) -> tuple:
    """(the group with every video scored, skipped or failed, Counts)."""
    counts = Counts()
    videos = [None] * len(group["videos"])
    pending, loaded = [], []
    for position, video in enumerate(group["videos"]):
        previous = done.get((group["group_id"], video["video_path"]))
        if previous is not None:
            videos[position] = _with_previous(video, previous)
            counts.skipped += 1
            continue
        try:
            loaded.append(source.load(video["video_path"]))
            pending.append(position)
        except Exception as exc:  # a video that cannot be read is recorded, the run goes on
            videos[position] = {**_clean(video), ERROR_KEY: _describe(exc)}
    results = {}
    if pending:
        try:
            scores = scoring.score_videos([g for _, g in loaded], frames=[f for f, _ in loaded], **options)
            results = dict(zip(pending, scores))
        except Exception:  # find the video(s) that broke the stacked call: score each alone
            for position, (frames, geometry) in zip(pending, loaded):
                try:
                    results[position] = scoring.score_videos([geometry], frames=[frames], **options)[0]
                except Exception as exc:
                    results[position] = exc
    for position, result in results.items():
        entry = _clean(group["videos"][position])
        if isinstance(result, Exception):
            entry[ERROR_KEY] = _describe(result)
        else:
            # Only the undefined metrics fail (written as null); the video leaves the pairing only
            # when one the pair selection reads is undefined.
            entry.update({key: value if math.isfinite(value) else None for key, value in result.items()})
            unranked = [key for key in PAIRING_KEYS if key in result and not math.isfinite(result[key])]
            if unranked:
                undefined = sorted(key for key, value in result.items() if not math.isfinite(value))
                entry[ERROR_KEY] = (f"not ranked: {' and '.join(unranked)} undefined (e.g. no valid depth or "
                                    f"confidence, so no point to render); undefined score(s) {undefined}")
        videos[position] = entry
    for position, entry in enumerate(videos):
        if ERROR_KEY in entry:
            counts.failed += 1
            counts.failures.append((group["group_id"], entry["video_path"], entry[ERROR_KEY]))
        elif position in results:
            counts.scored += 1
    progress(len(group["videos"]), group["group_id"], counts)
    return {**group, "videos": videos}, counts


# --------------------------------------------------------------------------------------------
# The command


def build_parser(prog: str = "vgpa score") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Score generated videos for geometric consistency and write VideoGPA's meta_data.json.")
    parser.add_argument("input", type=Path,
                        help="groups file: {\"groups\": [{\"group_id\", \"prompt\", \"videos\": [{\"video_path\", "
                             "...}]}]} or a bare list of groups; relative video paths are relative to its folder")
    parser.add_argument("--geometry", required=True,
                        help="DIR of precomputed <DIR>/<video stem>.npz Geometry files, or 'vggt' / 'da3' to run "
                             "that model (with --model-path)")
    parser.add_argument("--model-path", help="local checkpoint of the --geometry model (never downloaded)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the scored groups file; an existing one is resumed (its scored videos are kept)")
    parser.add_argument("--num-frames", type=int, default=10, help="frames sampled uniformly from each video")
    parser.add_argument("--size", type=int, default=518, help="frames are centre-cropped and resized to size x size")
    parser.add_argument("--conf-threshold", type=float, default=0.0,
                        help="3DCS: keep the points above this confidence percentile (0 keeps all)")
    parser.add_argument("--points", choices=POINT_SOURCES, default="depth",
                        help="3DCS's points: 'depth' unprojects each depth with its camera; 'point_map' takes the "
                             "geometry's point map (VGGT's point head), as VideoGPA does")
    parser.add_argument("--conf-ties", choices=CONF_TIES, default="first",
                        help="equal confidences at the --conf-threshold cut: 'first' keeps exactly the percentile's "
                             "count (ties to the earlier pixel); 'all' keeps every point >= its confidence, as "
                             "VideoGPA does")
    parser.add_argument("--metrics", default=",".join(scoring.DEFAULT_METRICS),
                        help=f"comma-separated, from {', '.join(list(scoring.METRICS) + [scoring.LPIPS])}; "
                             f"must include {' and '.join(REQUIRED_METRICS)}")
    parser.add_argument("--min-gap", type=float, default=0.05,
                        help="the summary counts the groups whose pair has loser - winner >= this")
    parser.add_argument("--min-motion", type=float, default=0.001,
                        help="the summary's pairs leave out videos with less motion")
    parser.add_argument("--batch-size", type=int, help="at most this many videos per stacked op call (default: all)")
    parser.add_argument("--device", help="default: the GPU when there is one (cuda:LOCAL_RANK), else the CPU")
    parser.add_argument("--backend", default="auto", help="vgpa backend of the ops")
    parser.add_argument("--no-progress", action="store_true", help="print no progress bar or lines")
    return parser


def _distributed():
    """(rank, world size, whether this call initialised torch.distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    initialised = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        initialised = True
    return dist.get_rank(), dist.get_world_size(), initialised


def _progress(total: int, enabled: bool, rank: int):
    """A callable (videos done, group id, counts) that advances a tqdm bar (when tqdm is
    installed) or prints a line per group."""
    if not enabled:
        return (lambda *args: None), (lambda: None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc="scoring" if rank == 0 else f"scoring (rank {rank})", unit="video",
                   position=rank, file=sys.stderr)

        def advance(videos, group_id, counts):
            bar.update(videos)
            bar.set_postfix(group=group_id, failed=counts.failed)

        return advance, bar.close
    state = {"done": 0}

    def line(videos, group_id, counts):
        state["done"] += videos
        print(f"[rank {rank}] " * (rank > 0) + f"{state['done']}/{total} videos: group {group_id!r} scored "
              f"{counts.scored}, skipped {counts.skipped}, failed {counts.failed}", file=sys.stderr, flush=True)

    return line, (lambda: None)


def summarize(groups: list, counts: Counts, min_gap: float, min_motion: float) -> str:
    lines = [f"scored {counts.scored}, skipped {counts.skipped} (already scored), failed {counts.failed} "
             f"of {sum(len(g['videos']) for g in groups)} videos in {len(groups)} groups"]
    for group_id, video_path, error in counts.failures[:10]:
        lines.append(f"  failed: group {group_id!r} {video_path}: {error}")
    if len(counts.failures) > 10:
        lines.append(f"  ... and {len(counts.failures) - 10} more (see the 'error' fields)")
    try:
        from .training.data import select_videogpa_pair
    except ImportError as exc:
        lines.append(f"pairs: not counted ({exc})")
    else:
        kept = sum(select_videogpa_pair(group["videos"], min_gap=min_gap, min_motion=min_motion) is not None
                   for group in groups)
        lines.append(f"pairs kept at min_gap {min_gap:g} (motion >= {min_motion:g}): {kept} of {len(groups)} groups")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        names = scoring.resolve_metrics(args.metrics)
    except ValueError as exc:
        raise SystemExit(f"vgpa score: --metrics {args.metrics}: {exc}") from None
    missing = [name for name in REQUIRED_METRICS if name not in names]
    if missing:
        raise SystemExit(f"vgpa score: --metrics must include {missing}: the trainer ranks videos by "
                         "consistency_score (3DCS) and leaves out static ones by motion_norm")
    if args.num_frames < 2:
        raise SystemExit(f"vgpa score: --num-frames must be >= 2 (the scores compare frames), got {args.num_frames}")
    if args.size < 1:
        raise SystemExit(f"vgpa score: --size must be >= 1, got {args.size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f"vgpa score: --batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.conf_threshold < 100:
        raise SystemExit(f"vgpa score: --conf-threshold is a percentage in [0, 100), got {args.conf_threshold}")
    if args.points == "point_map" and args.geometry == "da3":
        raise SystemExit("vgpa score: --points point_map needs a point map, which Depth Anything 3 does not predict; "
                         "use --points depth")
    groups = load_groups(args.input)
    done = previous_results(args.out, groups)

    rank, world, initialised = _distributed()
    try:
        if args.device:
            device = torch.device(args.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise SystemExit(f"vgpa score: --device {args.device}, but torch sees no CUDA GPU")
        elif torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        else:
            device = torch.device("cpu")
        source = Source(root=args.input.resolve().parent, num_frames=args.num_frames, size=args.size)
        if args.geometry in PROVIDERS:
            source.provider = load_geometry_model(args.geometry, args.model_path, device)
        else:
            source.geometry_dir = Path(args.geometry)
            if not source.geometry_dir.is_dir():
                raise SystemExit(f"vgpa score: --geometry {args.geometry}: not a folder, nor one of "
                                 f"{sorted(PROVIDERS)}")
            _check_geometry_names(groups, source)
        options = dict(metrics=names, conf_threshold=args.conf_threshold, backend=args.backend, device=device,
                       batch_size=args.batch_size, points=args.points, conf_ties=args.conf_ties)

        mine = list(range(rank, len(groups), world))
        advance, close = _progress(sum(len(groups[k]["videos"]) for k in mine), not args.no_progress, rank)
        # What the output holds before this run scores anything: the input, with the scores resumed.
        state = [{**group, "videos": [_with_previous(v, done.get((group["group_id"], v["video_path"])))
                                      for v in group["videos"]]} for group in groups]
        total = Counts()
        try:
            for start in range(0, len(groups), world):  # one round: one group per process
                index = start + rank
                record = None
                if index < len(groups):
                    scored, counts = score_group(groups[index], done, source, options, advance)
                    record = (index, scored, counts)
                records = [record]
                if world > 1:
                    import torch.distributed as dist

                    records = [None] * world if rank == 0 else None
                    dist.gather_object(record, records, dst=0)
                if rank == 0:
                    for entry in records:
                        if entry is not None:
                            state[entry[0]] = entry[1]
                            total.add(entry[2])
                    write_atomically(args.out, {"groups": state})
        finally:
            close()
        if rank == 0:
            print(summarize(state, total, args.min_gap, args.min_motion))
    finally:
        if initialised:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _check_geometry_names(groups: list, source: Source) -> None:
    """Two videos whose names give the same geometry file would share one geometry: refused."""
    owner = {}
    for group in groups:
        for video in group["videos"]:
            file = source.geometry_file(video["video_path"])
            other = owner.setdefault(file, (group["group_id"], video["video_path"]))
            if other != (group["group_id"], video["video_path"]) and \
                    source.video_file(other[1]).resolve() != source.video_file(video["video_path"]).resolve():
                raise InputFileError(f"videos {other[1]!r} (group {other[0]!r}) and {video['video_path']!r} (group "
                                     f"{group['group_id']!r}) both map to the geometry file {file}; give the videos "
                                     "distinct file names")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except InputFileError as exc:
        parser.exit(2, f"vgpa score: {exc}\n")
