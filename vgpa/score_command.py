"""`vgpa score`: from generated videos and their geometry to VideoGPA's scored groups file
(meta_data.json), the file examples/train_dpo.py and vgpa.training read (docs/design.md 3.7).

The output holds every input group with every video entry as it was, plus its scores (or an
``error`` when it could not be scored), and under ``score_options`` the options that change
scores. A run holds a lock on the output from start to end, so a second run on the same --out
is refused with the first one's pid, host and start time. The file is rewritten atomically
after each group, so an interrupted run loses nothing and a rerun with the same --out (and the
same score options) scores only what is missing.
Under torchrun / accelerate launch (WORLD_SIZE > 1) group k goes to rank k % WORLD_SIZE and the
main process holds the lock and writes the merged file.

Exit status: 0 when the output holds at least one score; 1 when every video failed, or when the
output could not be written during the run; 2 when nothing was scored because an argument, the
input file or the output is unusable (checked before any scoring).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from . import _backend, scoring
from .geometry import POINT_SOURCES
from .pairs import MIN_GAP, MIN_MOTION, MOTION_KEY, SCORE_KEY, select_videogpa_pair
from .torch_math.point_cloud import CONF_TIES

PROVIDERS = {
    # --geometry NAME: (module with the model class, install command)
    "vggt": ("vggt", "pip install git+https://github.com/facebookresearch/vggt"),
    "da3": ("depth_anything_3", "pip install depth-anything-3"),
}
ERROR_KEY = "error"
OPTIONS_KEY = "score_options"  # the output's record of the options its scores were made with
# Every key a metric may write; a video's previous scores are these keys.
SCORE_FIELDS = tuple(dict.fromkeys(key for metric in scoring.METRICS.values() for key in metric.keys))
REQUIRED_METRICS = ("3dcs", "motion")  # what the trainer ranks by and filters by
EXIT_FAILED = 1  # every video failed, or the output could not be written during the run
EXIT_USAGE = 2  # nothing was scored: an argument, the input file or the output is unusable
# The keys the pair selection reads: a video with one of them undefined is not ranked.
PAIRING_KEYS = (SCORE_KEY, MOTION_KEY)


class CommandError(Exception):
    """Stops `vgpa score` with ``vgpa score: <message>`` on stderr and exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class InputFileError(CommandError, ValueError):
    """The input or output groups file is not what `vgpa score` can use; the message names the
    file, the group and the field."""


class OutputFileError(CommandError):
    """--out cannot be written, or another run holds it; raised before anything is scored."""


# --------------------------------------------------------------------------------------------
# The options that change scores


_UNKNOWN = object()


@dataclass(frozen=True)
class ScoreOption:
    """An option that changes scores. Its value is recorded in the output under OPTIONS_KEY
    (as ``key``) and compared on resume, so that one file never mixes scores of two settings.

    flag: the command-line flag, for messages. read(args): its value, as JSON. before: the value
    that outputs recorded before this entry existed were scored with (the behaviour before the
    option), or unknown: such an output is then refused."""

    flag: str
    key: str
    read: Callable[[argparse.Namespace], object]
    before: object = _UNKNOWN


# Every option that changes a score: a new one is one more entry. Not here: the inputs
# (videos, geometry files, checkpoints are data, not options); --batch-size (stacking changes no
# score), --device and --backend (float rounding); --min-gap and --min-motion (the summary only).
SCORE_OPTIONS = (
    ScoreOption("--metrics", "metrics", lambda args: list(scoring.resolve_metrics(args.metrics))),
    ScoreOption("--conf-threshold", "conf_threshold", lambda args: float(args.conf_threshold)),
    ScoreOption("--num-frames", "num_frames", lambda args: int(args.num_frames)),
    ScoreOption("--size", "size", lambda args: int(args.size)),
    ScoreOption("--geometry", "geometry", lambda args: args.geometry if args.geometry in PROVIDERS else "files"),
    ScoreOption("--accept-truncated", "accept_truncated", lambda args: bool(args.accept_truncated)),
    ScoreOption("--points", "points", lambda args: args.points, before="depth"),
    ScoreOption("--conf-ties", "conf_ties", lambda args: args.conf_ties, before="first"),
)


def score_options(args: argparse.Namespace) -> dict:
    """{key: value} of SCORE_OPTIONS for this run: what the output records."""
    return {option.key: option.read(args) for option in SCORE_OPTIONS}


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def check_options(out: Path, recorded, current: dict) -> None:
    """Refuses to resume an output whose scores were made with other score options, naming
    each option that differs, with the recorded value and this run's."""
    if not isinstance(recorded, dict):
        raise InputFileError(f"{out}: holds scores but no record of the options they were made with "
                             f"('{OPTIONS_KEY}'; written by an older vgpa score): they cannot be resumed safely; "
                             "score into a new --out")
    known = {option.key for option in SCORE_OPTIONS}
    changed = [f"'{key}' {_shown(value)} (an option this vgpa does not know)"
               for key, value in recorded.items() if key not in known]
    for option in SCORE_OPTIONS:
        old = recorded.get(option.key, option.before)
        if old is _UNKNOWN:
            changed.append(f"{option.flag} not recorded")
        elif old != current[option.key]:
            changed.append(f"{option.flag} {_shown(old)} (this run: {_shown(current[option.key])})")
    if changed:
        raise InputFileError(f"{out}: its scores were made with {'; '.join(changed)}; resuming would mix scores of "
                             "two settings: rerun with the recorded options, or score into a new --out")


# --------------------------------------------------------------------------------------------
# Groups files


class _NotJSON(ValueError):
    """A token that Python's json reads but strict JSON has not (NaN, Infinity, 1e999)."""


def _reject_constant(token: str):
    raise _NotJSON(f"the token {token}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"the number {text}, out of a double's range,")
    return value


def read_json(path: Path):
    """The content of a strict JSON file, read as UTF-8 (a byte-order mark is allowed) whatever
    the locale. NaN, Infinity and numbers out of a double's range are refused: strict JSON
    parsers (the trainer's may be one) reject them."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc})") from exc
    except _NotJSON as exc:
        raise InputFileError(f"{path}: {exc} is not JSON (strict JSON has no NaN or Infinity); write null or a "
                             "string instead") from None


def load_groups(path: Path) -> list:
    """The groups of a VideoGPA groups file ({"groups": [...]} or a bare list of groups), checked:
    at least one group; each group an object with a unique ``group_id`` (str or int) and a
    non-empty ``videos`` list of objects with a non-empty ``video_path`` string, unique within
    the group."""
    if path.is_dir():
        raise InputFileError(f"{path} is a folder; vgpa score takes a groups file, JSON like {{\"groups\": "
                             "[{\"group_id\": \"g0\", \"prompt\": \"...\", \"videos\": [{\"video_path\": "
                             "\"videos/a.mp4\"}]}]} (see docs/scoring.md)")
    return groups_of(path, read_json(path))


def groups_of(path: Path, content) -> list:
    """The checked groups of the content of the groups file ``path`` (see load_groups)."""
    groups = content.get("groups") if isinstance(content, dict) else content
    if not isinstance(groups, list):
        raise InputFileError(f"{path}: expected VideoGPA's groups format, {{\"groups\": [...]}} or a list of groups")
    if not groups:
        raise InputFileError(f"{path}: holds no groups; there is nothing to score")
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


def _is_scored(video: dict) -> bool:
    score = video.get(SCORE_KEY)
    return ERROR_KEY not in video and isinstance(score, (int, float)) and not isinstance(score, bool) \
        and math.isfinite(score)


def previous_results(out: Path, content, groups: list, options: dict) -> dict:
    """{(group_id, video_path): video entry} of the videos already scored in ``content``, the
    output being resumed (None: there is none). An output holding a group the input lacks is
    refused, so that a run never overwrites the results of another dataset; one whose scores
    were made with other score options is refused too (check_options)."""
    if content is None:
        return {}
    previous = groups_of(out, content)
    known = {group["group_id"] for group in groups}
    foreign = [group["group_id"] for group in previous if group["group_id"] not in known]
    if foreign:
        raise InputFileError(f"{out}: holds group(s) {foreign[:3]} that the input does not; it is the output of "
                             "another dataset: choose another --out")
    done = {(group["group_id"], video["video_path"]): video
            for group in previous for video in group["videos"] if _is_scored(video)}
    if done:  # an output without a score has nothing to mix with: any options may take it over
        check_options(out, content.get(OPTIONS_KEY) if isinstance(content, dict) else None, options)
    return done


def _json_ready(value):
    """``value`` with every NaN or infinite float replaced by None: undefined scores are null in
    the output, which strict JSON parsers accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only
    read it by setting it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, content) -> None:
    """Writes ``content`` as strict JSON (undefined scores as null) to a temporary file in the
    same folder, then renames it over ``path``: a reader (or an interrupted run) sees the old
    file or the new one, never half of one. The file gets the mode a new file gets under the
    umask (the temporary file's 0600 would hide it from other users, e.g. the trainer's)."""
    text = json.dumps(_json_ready(content), indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _temporaries(out: Path) -> list:
    """The temporary files of write_atomically for ``out`` in its folder (mkstemp's names: the
    prefix, 8 characters of [a-z0-9_], the suffix)."""
    name = re.compile(re.escape(f".{out.name}.") + r"[a-z0-9_]{8}\.tmp")
    with os.scandir(out.parent) as entries:
        return [Path(entry.path) for entry in entries
                if name.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)]


class OutputLock:
    """An exclusive lock on --out for one run: flock(2) on the sibling file ``<out>.lock``, which
    holds the pid, host, start time and input of the run holding it, for the message another run
    gets. The kernel drops the lock when its process ends, however it ends; release removes the
    file."""

    def __init__(self, out: Path, input_path: Path):
        self.out = out
        self.path = out.with_name(out.name + ".lock")
        self.input = input_path
        self.fd = None

    def acquire(self) -> "OutputLock":
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputFileError(f"--out {self.out}: cannot create its lock file {self.path} "
                                      f"({exc.strerror or exc})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise OutputFileError(f"--out {self.out} is being written by another vgpa score ({holder}; lock file "
                                      f"{self.path}); wait for it to end, or choose another --out") from None
            except OSError as exc:
                os.close(fd)
                raise OutputFileError(f"--out {self.out}: cannot lock {self.path} ({exc.strerror or exc}); the "
                                      "output must be on a filesystem with file locks") from exc
            # A lock taken on a file that its previous holder has just removed locks nothing: retry.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    holder = {"pid": os.getpid(), "host": socket.gethostname(),
                              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                              "input": str(self.input)}
                    with contextlib.suppress(OSError):  # only for others' messages: a full disk must not stop here
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, json.dumps(holder).encode(), 0)
                    self.fd = fd
                    return self
            os.close(fd)
        raise OutputFileError(f"--out {self.out}: could not take the lock {self.path}")

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            return (f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}, scoring "
                    f"{holder['input']}")
        except (OSError, ValueError, KeyError, TypeError):  # taken an instant ago: its details are not written yet
            return "a process that has just started"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def check_output_path(out: Path) -> None:
    """--out must be a file path whose folder exists or can be made; refused with the reason."""
    if out.is_dir():
        raise OutputFileError(f"--out {out} is a folder; --out is the scored groups file to write, e.g. "
                              f"{out / 'meta_data.json'}")
    if os.path.lexists(out) and not out.is_file():
        raise OutputFileError(f"--out {out} exists and is not a regular file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else \
            (exc.strerror or str(exc))
        raise OutputFileError(f"--out {out}: its folder {out.parent} cannot be made ({reason})") from exc


class OutputWriter:
    """Writes the output when its content differs from what the file holds (a resume that
    scores nothing leaves the file untouched), or when asked to (to check that it can be)."""

    def __init__(self, path: Path, on_disk):
        self.path = path
        self.on_disk = on_disk

    def write(self, content, force: bool = False) -> None:
        ready = _json_ready(content)
        if ready != self.on_disk or force:
            write_atomically(self.path, ready)
            self.on_disk = ready


def claim_output(args: argparse.Namespace, groups: list, options: dict, stack: contextlib.ExitStack) -> tuple:
    """What the main process does with --out before anything is scored: checks its path, takes
    its lock for the run (released by ``stack``), removes the temporary files a killed run left,
    reads what can be resumed, and writes what the output holds before this run scores anything
    (when there is something to score: so that a full disk or a read-only folder shows now).
    Returns (previous_results, the groups as written, an OutputWriter)."""
    out = args.out
    check_output_path(out)
    stack.callback(OutputLock(out, args.input).acquire().release)
    for temporary in _temporaries(out):
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    content = read_json(out) if out.exists() else None
    done = previous_results(out, content, groups, options)
    state = [{**group, "videos": [_with_previous(video, done.get((group["group_id"], video["video_path"])))
                                  for video in group["videos"]]} for group in groups]
    writer = OutputWriter(out, content)
    pending = any((group["group_id"], video["video_path"]) not in done for group in groups for video in group["videos"])
    try:
        writer.write({OPTIONS_KEY: options, "groups": state}, force=pending)
    except OSError as exc:
        raise OutputFileError(f"--out {out} cannot be written ({exc.strerror or exc}); nothing was scored") from exc
    return done, state, writer


# --------------------------------------------------------------------------------------------
# Geometry sources


def check_geometry_model(name: str, model_path: Optional[str]) -> Path:
    """What ``--geometry vggt|da3`` needs before anything runs: the model's package, and
    ``--model-path``, a local checkpoint (a hub id is refused: weights are never downloaded
    implicitly). Returns the checkpoint's path."""
    module_name, install = PROVIDERS[name]
    try:
        __import__(module_name)
    except ImportError as exc:
        raise CommandError(f"--geometry {name} needs the {module_name} package ({exc}); install it with "
                           f"`{install}`, or pass --geometry DIR with precomputed geometry files") from exc
    if model_path is None:
        raise CommandError(f"--geometry {name} needs --model-path, a local checkpoint; weights are never "
                           "downloaded (fetch them once, e.g. with `huggingface-cli download`, and pass the folder)")
    path = Path(model_path)
    if not path.exists():
        raise CommandError(f"--model-path {path} does not exist (a local checkpoint folder or file; "
                           "weights are never downloaded)")
    if name == "da3" and not path.is_dir():
        raise CommandError(f"--geometry da3 takes a checkpoint folder as --model-path, got {path}")
    return path


def load_geometry_model(name: str, model_path: Optional[str], device: torch.device):
    """The provider of ``--geometry vggt|da3`` with its model loaded from a local checkpoint,
    ``--model-path``: a folder written by the model's save_pretrained (or downloaded once with
    ``huggingface-cli download``), or for VGGT also a .pt/.pth/.safetensors state dict."""
    path = check_geometry_model(name, model_path)
    from . import geometry

    if name == "da3":
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
    accept_truncated: bool = False  # score a video that decodes fewer frames than its container reports

    def video_file(self, video_path: str) -> Path:
        path = Path(video_path)
        return path if path.is_absolute() else self.root / path

    def geometry_file(self, video_path: str) -> Path:
        from .geometry import geometry_path_for

        return Path(geometry_path_for(self.video_file(video_path), self.geometry_dir))

    def read(self, video_path: str):
        """The video's frames; a truncated video raises TruncatedVideoError unless accepted."""
        from .video import read_video

        return read_video(self.video_file(video_path), self.num_frames, size=self.size,
                          truncated="warn" if self.accept_truncated else "error")

    def load(self, video_path: str, clock: Optional[scoring.StageClock] = None):
        """(frames (T, 3, H, W) uint8 at the geometry's resolution, geometry); raises with the
        reason when the video or its geometry cannot be used. The frames are the geometry's own
        (the frames it was computed from) when it holds them, else the ones read from the video.
        ``clock`` times the stages "load" (the geometry file), "decode" and "geometry model"."""
        clock = clock or scoring.StageClock(None, torch.device("cpu"))
        if self.geometry_dir is not None:  # check the geometry first: no decode for a video without one
            from .geometry import load_geometry

            geometry_file = self.geometry_file(video_path)
            if not geometry_file.exists():
                raise FileNotFoundError(f"no geometry file {geometry_file}")
            if not geometry_file.is_file():  # a FIFO would block the read
                raise ValueError(f"the geometry file {geometry_file} is not a regular file")
            geometry = load_geometry(geometry_file)
            clock.lap("load")
            frames = self.read(video_path)
            clock.lap("decode")
        else:
            frames = self.read(video_path)
            clock.lap("decode")
            geometry = self.provider(frames)
            clock.lap("geometry model")
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
    from .video import TruncatedVideoError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TruncatedVideoError):
        text += ("; the frames sampled from what decodes are not the frames its geometry was made from "
                 "(--accept-truncated scores it, for geometry made from the same decode)")
    return text


@dataclass
class ReadGroup:
    """A group read for scoring: ``videos`` holds the entries of the videos skipped (scored
    before) or failed (could not be read), None for the others; ``pending`` their positions and
    ``loaded`` their (frames, geometry), in the same order."""

    videos: list
    pending: list
    loaded: list
    counts: Counts


def read_group(group: dict, done: dict, source: Source, clock: Optional[scoring.StageClock] = None) -> ReadGroup:
    """Reads the videos of ``group`` that ``done`` does not hold; a video that cannot be read
    is recorded with its error (which names the file), never raised."""
    read = ReadGroup([None] * len(group["videos"]), [], [], Counts())
    for position, video in enumerate(group["videos"]):
        previous = done.get((group["group_id"], video["video_path"]))
        if previous is not None:
            read.videos[position] = _with_previous(video, previous)
            read.counts.skipped += 1
            continue
        try:
            read.loaded.append(source.load(video["video_path"], clock))
            read.pending.append(position)
        except Exception as exc:  # a video that cannot be read is recorded, the run goes on
            read.videos[position] = {**_clean(video), ERROR_KEY: _describe(exc)}
    return read


class GroupReader:
    """Reads groups in a thread of its own, in order, so that decoding and loading the next
    group overlap scoring the current one. It reads a group only when fewer than ``ahead``
    groups wait to be taken (``next``): memory holds the group being scored and at most
    ``ahead`` read ones. ``next(index)`` returns the read group ``index`` (the next one in
    order); an error of the thread is raised there, naming the group. ``close()`` stops the
    thread (before its next group) and waits for it; the thread is a daemon, so an interrupted
    run never waits on it. ``times``: the thread's seconds per stage."""

    def __init__(self, groups: list, indices: list, done: dict, source: Source, ahead: int = 1):
        import queue
        import threading

        self.groups, self.indices, self.done, self.source = groups, list(indices), done, source
        self.times: dict = {}
        self.queue = queue.Queue()
        self.slots = threading.Semaphore(ahead)  # taken by a read group until ``next`` hands it over
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vgpa-score-reader", daemon=True)
        self.thread.start()

    def _run(self):
        clock = scoring.StageClock(self.times, torch.device("cpu"))
        for index in self.indices:
            while not self.slots.acquire(timeout=0.1):
                if self.stop.is_set():
                    return
            if self.stop.is_set():
                return
            clock.lap("waiting for the scoring")
            try:
                item = (index, read_group(self.groups[index], self.done, self.source, clock), None)
            except BaseException as exc:  # handed to the scoring thread, which raises it
                item = (index, None, exc)
            self.queue.put(item)
            clock.lap("read glue")
            if item[2] is not None:
                return

    def next(self, index: int) -> ReadGroup:
        got, read, error = self.queue.get()
        self.slots.release()
        group_id = self.groups[got]["group_id"]
        if error is not None:
            raise RuntimeError(f"reading group {group_id!r} failed: {type(error).__name__}: {error}") from error
        if got != index:  # the thread reads the indices given, in order
            raise RuntimeError(f"the reading thread handed over group {group_id!r} in place of group "
                               f"{self.groups[index]['group_id']!r}")
        return read

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def score_group(group: dict, done: dict, source: Source, options: dict, progress,
                read: Optional[ReadGroup] = None) -> tuple:
    """(the group with every video scored, skipped or failed, Counts). ``read``: the group as
    read_group read it (by a GroupReader), else it is read here."""
    read = read_group(group, done, source) if read is None else read
    videos, pending, loaded, counts = read.videos, read.pending, read.loaded, read.counts
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
                        help="the scored groups file; an existing one is resumed (its scored videos are kept) when "
                             "it was scored with the same score options; locked for the run")
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
    parser.add_argument("--min-gap", type=float, default=MIN_GAP,
                        help="the summary counts the groups whose pair has loser - winner >= this")
    parser.add_argument("--min-motion", type=float, default=MIN_MOTION,
                        help="the summary's pairs leave out videos with less motion")
    parser.add_argument("--batch-size", type=int, help="at most this many videos per stacked op call (default: all)")
    parser.add_argument("--device", help="default: the GPU when there is one (cuda:LOCAL_RANK), else the CPU")
    parser.add_argument("--accept-truncated", action="store_true",
                        help="score a video that decodes fewer frames than its container reports, from the frames "
                             "that decode, instead of failing it: for geometry made from that same decode")
    parser.add_argument("--backend", default="auto", choices=("auto",) + _backend.BACKENDS,
                        help="vgpa backend of the ops")
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
    kept = sum(select_videogpa_pair(group["videos"], min_gap=min_gap, min_motion=min_motion) is not None
               for group in groups)
    lines.append(f"pairs kept at min_gap {min_gap:g} (motion >= {min_motion:g}): {kept} of {len(groups)} groups")
    return "\n".join(lines)


# The stages time_summary reports: those of the reading thread overlap the others.
READ_STAGES = ("decode", "load", "geometry model")
SCORING_STAGES = ("score", "write", "waiting for the reader")


def time_summary(times: dict, scored: int) -> str:
    """One line: the wall time, videos scored per second, and each stage's seconds and share of
    the wall time (the reading thread's stages overlap the scoring's, so shares can add up to
    more than 100%)."""
    wall = times.get("wall", 0.0)

    def part(stage):
        seconds = times.get(stage, 0.0)
        return f"{stage} {seconds:.2f} s ({100 * seconds / wall:.0f}%)" if wall > 0 else f"{stage} {seconds:.2f} s"

    rate = f"{scored / wall:.2f} videos/s" if wall > 0 else "-"
    read = [part(stage) for stage in READ_STAGES if stage in times]
    return (f"time: {wall:.2f} s for {scored} videos scored ({rate}); "
            + ", ".join(part(stage) for stage in SCORING_STAGES if stage in times)
            + (f"; reading: {', '.join(read)}" if read else ""))


def wait_policy_hint(device: torch.device, load: Optional[float] = None, environ=None) -> Optional[str]:
    """The advice printed before scoring on a CPU loaded beyond its cores while OMP_WAIT_POLICY is
    unset, else None. Scoring is many short OpenMP regions of vgpa's kernels and torch's ops, and
    libgomp's idle threads spin by default: under load a region then waits for threads that other
    processes have descheduled. Only the environment of the process can change that (libgomp reads
    it when torch loads it), so the command says so instead of setting it."""
    environ = os.environ if environ is None else environ
    if device.type != "cpu" or "OMP_WAIT_POLICY" in environ:
        return None
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform
            return None
    cores = os.cpu_count() or 1  # the load average counts the whole machine's runnable threads (as vgpa bench does)
    if load <= cores:
        return None
    return (f"vgpa score: the load average ({load:.1f}) exceeds this machine's {cores} cores; on a "
            "loaded CPU, scoring runs faster with OMP_WAIT_POLICY=passive in its environment "
            "(OMP_WAIT_POLICY=passive vgpa score ...; docs/scoring.md)")


def say(text: str, stream=None) -> None:
    """Prints ``text`` on ``stream`` (stdout), escaping what its encoding cannot hold (a group id
    in another script under an ASCII locale) instead of failing at the end of a run."""
    stream = sys.stdout if stream is None else stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=True)


def _check_arguments(args: argparse.Namespace) -> tuple:
    """The metric names; every argument checked before anything is read or written."""
    try:
        names = scoring.resolve_metrics(args.metrics)
    except ValueError as exc:
        raise CommandError(f"--metrics {args.metrics}: {exc}") from None
    missing = [name for name in REQUIRED_METRICS if name not in names]
    if missing:
        raise CommandError(f"--metrics must include {missing}: the trainer ranks videos by consistency_score (3DCS) "
                           "and leaves out static ones by motion_norm")
    if args.num_frames < 2:
        raise CommandError(f"--num-frames must be >= 2 (the scores compare frames), got {args.num_frames}")
    if args.size < 1:
        raise CommandError(f"--size must be >= 1, got {args.size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.conf_threshold < 100:
        raise CommandError(f"--conf-threshold is a percentage in [0, 100), got {args.conf_threshold}")
    if args.points == "point_map" and args.geometry == "da3":
        raise CommandError("--points point_map needs a point map, which Depth Anything 3 does not predict; "
                           "use --points depth")
    return names


def _device(args: argparse.Namespace) -> torch.device:
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise CommandError(f"--device {args.device}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CommandError(f"--device {args.device}, but torch sees no CUDA GPU")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _check_backend(backend: str, device: torch.device) -> None:
    """A backend that cannot run on ``device`` (or a bad VGPA_BACKEND under auto) is refused here,
    not once per video."""
    try:
        _backend.resolve(backend, device, f"--backend {backend} on {device}")
    except (ValueError, _backend.BackendUnavailableError) as exc:
        raise CommandError(str(exc)) from None


def _agree(world: int, error: Optional[CommandError], payload):
    """Every process learns whether any process failed its checks (each then stops with that
    error, none waits for the others in a collective), and gets the main process's ``payload``."""
    if world > 1:
        import torch.distributed as dist

        gathered = [None] * world
        dist.all_gather_object(gathered, (None if error is None else (str(error), error.code), payload))
        failed = next((entry[0] for entry in gathered if entry[0] is not None), None)
        if error is None and failed is not None:
            error = CommandError(*failed)
        payload = gathered[0][1]
    if error is not None:
        raise error
    return payload


def run(args: argparse.Namespace, timings: Optional[dict] = None) -> int:
    """The command on parsed arguments; returns the exit status. ``timings``: a dict that gets
    this process's seconds per stage (time_summary's stages, and "wall")."""
    names = _check_arguments(args)
    groups = load_groups(args.input)
    source = Source(root=args.input.resolve().parent, num_frames=args.num_frames, size=args.size,
                    accept_truncated=args.accept_truncated)
    if args.geometry in PROVIDERS:
        check_geometry_model(args.geometry, args.model_path)
    else:
        source.geometry_dir = Path(args.geometry)
        if not source.geometry_dir.is_dir():
            raise CommandError(f"--geometry {args.geometry}: not a folder, nor one of {sorted(PROVIDERS)}")
        _check_geometry_names(groups, source)
    recorded = score_options(args)

    rank, world, initialised = _distributed()
    try:
        with contextlib.ExitStack() as stack:
            error, done, writer, state = None, {}, None, None
            try:
                device = _device(args)
                _check_backend(args.backend, device)
                if rank == 0:
                    done, state, writer = claim_output(args, groups, recorded, stack)
            except CommandError as exc:
                error = exc
            done = _agree(world, error, done)
            hint = wait_policy_hint(device) if rank == 0 else None
            if hint:
                say(hint, sys.stderr)

            if source.geometry_dir is None:
                source.provider = load_geometry_model(args.geometry, args.model_path, device)
            options = dict(metrics=names, conf_threshold=args.conf_threshold, backend=args.backend, device=device,
                           batch_size=args.batch_size, points=args.points, conf_ties=args.conf_ties)
            mine = list(range(rank, len(groups), world))
            advance, close = _progress(sum(len(groups[k]["videos"]) for k in mine), not args.no_progress, rank)
            total = Counts()
            times = {} if timings is None else timings
            clock = scoring.StageClock(times, device)
            # Geometry files: a thread reads the next group while this one is scored. A geometry
            # model runs here, in the scoring thread (it holds the device).
            reader = GroupReader(groups, mine, done, source) if source.geometry_dir is not None and mine else None
            started = time.perf_counter()
            try:
                for start in range(0, len(groups), world):  # one round: one group per process
                    index = start + rank
                    record = None
                    if index < len(groups):
                        clock.lap("between groups")
                        if reader is not None:
                            read = reader.next(index)
                            clock.lap("waiting for the reader")
                        else:
                            read = read_group(groups[index], done, source, clock)
                        scored, counts = score_group(groups[index], done, source, options, advance, read=read)
                        clock.lap("score")
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
                        try:
                            writer.write({OPTIONS_KEY: recorded, "groups": state})
                        except OSError as exc:
                            raise CommandError(f"--out {args.out} cannot be written ({exc.strerror or exc}); it holds "
                                               "what was scored before: rerun to resume", EXIT_FAILED) from exc
                        clock.lap("write")
            finally:
                if reader is not None:
                    reader.close()
                    for stage, seconds in reader.times.items():
                        times[stage] = times.get(stage, 0.0) + seconds
                times["wall"] = time.perf_counter() - started
                close()
            code = 0
            if rank == 0:
                say(summarize(state, total, args.min_gap, args.min_motion))
                say(time_summary(times, total.scored))
                if not any(_is_scored(video) for group in state for video in group["videos"]):
                    say(f"vgpa score: every video failed, {args.out} holds no score (the reasons are in its "
                        "'error' fields)", sys.stderr)
                    code = EXIT_FAILED
            if world > 1:
                import torch.distributed as dist

                codes = [code]
                dist.broadcast_object_list(codes, src=0)
                code = codes[0]
            return code
    finally:
        if initialised:
            import torch.distributed as dist

            dist.destroy_process_group()


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
    except CommandError as exc:
        parser.exit(exc.code, f"vgpa score: {exc}\n")
