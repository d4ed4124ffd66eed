"""Reading and writing videos with OpenCV, and VideoGPA's frame preparation (docs/design.md 3.7).

OpenCV is an optional dependency (``pip install "vgpa[video]"``), imported on first use.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["TruncatedVideoError", "VideoReadError", "VideoWriteError", "prepare_frames", "read_video", "sample_indices",
           "write_video"]

# The container each writable suffix gets: mp4v (MPEG-4 part 2) goes through OpenCV's FFmpeg
# backend, which stores even sides only; Motion-JPEG AVI through OpenCV's built-in writer, which
# needs no FFmpeg and stores any size.
_WRITERS = {".mp4": "mp4v", ".avi": "MJPG"}


class VideoReadError(OSError):
    """A video file that is missing, empty, unreadable, or that OpenCV cannot decode. ``path`` is
    the file, ``reason`` says what is wrong with it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


class TruncatedVideoError(VideoReadError):
    """A video that decodes fewer frames than its container reports (``read_video(...,
    truncated="error")``): ``reported`` and ``decoded`` are the two counts."""

    def __init__(self, path, reported: int, decoded: int):
        self.reported = reported
        self.decoded = decoded
        super().__init__(path, f"{reported} frames reported but only {decoded} decode (a truncated or damaged file)")


class VideoWriteError(OSError):
    """OpenCV could not write the video file ``path``."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot write video {self.path}: {reason}")


def import_cv2(what: str = "vgpa.video"):
    """cv2, imported on first use, or an ImportError saying that ``what`` needs it and how to
    install it (vgpa.video and vgpa.features share this)."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(f'{what} needs OpenCV: pip install "vgpa[video]" (or opencv-python-headless)') from exc
    return cv2


# --------------------------------------------------------------------------------------------
# Arguments


def _check_size(op, size):
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{op}: size must be None or a positive int, got {size!r}")


def _check_crop(op, crop):
    if crop not in ("center", None):
        raise ValueError(f'{op}: crop must be "center" or None, got {crop!r}')


def _check_num_frames(op, num_frames):
    if num_frames is None:
        return
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"{op}: num_frames must be None or a positive int, got {num_frames!r}")


def sample_indices(total: int, num_frames: int | None) -> list[int]:
    """VideoGPA's uniform sampling: ``numpy.linspace(0, total - 1, num_frames).astype(int)``
    (truncation toward zero), or every index when ``num_frames`` is None or >= ``total``."""
    if num_frames is None or num_frames >= total:
        return list(range(total))
    return np.linspace(0, total - 1, num_frames).astype(int).tolist()


def _frames_to_uint8(op: str, name: str, frames: Tensor) -> Tensor:
    """uint8 frames as they are; floating frames, which must be finite and in [0, 1], as
    round(255 x) in uint8. Anything else raises, naming ``name``."""
    if not isinstance(frames, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype == torch.uint8:
        return frames
    if not frames.is_floating_point():
        raise TypeError(f"{op}: {name} must be uint8 or floating point in [0, 1], got dtype {frames.dtype}")
    if frames.numel() and not bool(((frames >= 0) & (frames <= 1)).all()):  # NaN fails both
        raise ValueError(f"{op}: floating-point {name} must be finite and in [0, 1]; got values in "
                         f"[{frames.nan_to_num().min().item():g}, {frames.nan_to_num().max().item():g}]"
                         + (" and NaN" if bool(frames.isnan().any()) else ""))
    return (frames.float() * 255).round_().to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Frame preparation: one implementation for decoded frames and for frames in memory


def _crop_and_resize(image: np.ndarray, size: int | None, crop: str | None, cv2) -> np.ndarray:
    """(H, W, C) -> the centre square (side min(H, W), offsets (H - side) // 2 and
    (W - side) // 2) when ``crop`` is "center", then bilinear (cv2.INTER_LINEAR) to
    size x size when ``size`` is given."""
    if crop == "center":
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top:top + side, left:left + side]
    if size is not None and image.shape[:2] != (size, size):
        # cv2.resize wants a contiguous array; a crop is a strided view.
        image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:  # cv2 drops a trailing axis of length 1
            image = image[:, :, None]
    return np.ascontiguousarray(image)


def prepare_frames(frames: Tensor, size: int | None = 518, crop: str | None = "center") -> Tensor:
    """VideoGPA's preparation of frames for the geometry model, on frames already in memory:
    centre-crop each frame to a square, then resize it to ``size`` x ``size`` with bilinear
    interpolation (cv2.INTER_LINEAR). ``size=None`` keeps the crop's size; ``crop=None`` resizes
    the whole frame. ``read_video`` prepares the frames it decodes with the same code.

    frames: (T, C, H, W), uint8 or floating point (any range), any strides. Returns
    (T, C, size, size) (the crop's side for ``size=None``) in the frames' dtype, on their device.
    """
    op = "prepare_frames"
    _check_size(op, size)
    _check_crop(op, crop)
    if not isinstance(frames, Tensor):
        raise TypeError(f"{op}: frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dim() != 4 or 0 in frames.shape[1:]:
        raise ValueError(f"{op}: frames must be (T, C, H, W) with C, H, W >= 1, got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8 or frames.dtype in (torch.float32, torch.float64):
        work_dtype = frames.dtype
    elif frames.is_floating_point():
        work_dtype = torch.float32  # OpenCV resizes 8-bit, float32 and float64 images
    else:
        raise TypeError(f"{op}: frames must be uint8 or floating point, got dtype {frames.dtype}")
    cv2 = import_cv2()
    images = frames.detach().to("cpu", work_dtype).permute(0, 2, 3, 1).numpy()
    prepared = [_crop_and_resize(image, size, crop, cv2) for image in images]
    if not prepared:
        height, width = frames.shape[2:]
        if crop == "center":
            height = width = min(height, width)
        if size is not None:
            height = width = size
        return frames.new_empty((0, frames.shape[1], height, width))
    out = torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2).contiguous()
    return out.to(frames.device, frames.dtype)


# --------------------------------------------------------------------------------------------
# Reading


# What a path that is not a regular file is, for the error: opening a FIFO (or a device) for
# reading can block forever, so such a path is refused before it is opened.
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _check_readable(path: Path):
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VideoReadError(path, "no such file") from None
    except OSError as exc:
        raise VideoReadError(path, f"the file cannot be opened ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(mode):
        raise VideoReadError(path, "it is a directory")
    if not stat.S_ISREG(mode):
        kind = next((f"it is {name}, not" for test, name in _FILE_KINDS if test(mode)), "it is not")
        raise VideoReadError(path, f"{kind} a regular file (reading it could block)")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as exc:
        raise VideoReadError(path, f"the file cannot be opened ({exc.strerror or exc})") from exc
    if not first:
        raise VideoReadError(path, "the file is empty")


def _to_rgb(frame: np.ndarray, path: Path, cv2) -> np.ndarray:
    if frame.dtype != np.uint8:
        raise VideoReadError(path, f"decoded frames are {frame.dtype}; only 8-bit videos are supported")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    channels = frame.shape[2]
    if channels == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if channels == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2RGB)
    raise VideoReadError(path, f"decoded frames have {channels} channels")


def _decode(path: Path, wanted, size, crop, cv2):
    """Decodes the whole video in order. Returns (the prepared RGB frames of the indices in
    ``wanted``, or of every frame when ``wanted`` is None, as {index: (H, W, 3) uint8}; the
    number of frames that decoded). Only wanted frames are converted and kept."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(path, "OpenCV cannot open it (not a video, a corrupted or truncated file, "
                                       "or a codec this OpenCV build lacks)")
        kept, index = {}, 0
        while True:
            try:
                if not capture.grab():
                    break
                if wanted is None or index in wanted:
                    ok, frame = capture.retrieve()
                    if not ok or frame is None:
                        break
                    kept[index] = _crop_and_resize(_to_rgb(frame, path, cv2), size, crop, cv2)
            except cv2.error as exc:
                raise VideoReadError(path, f"decoding frame {index} failed: {exc}") from exc
            index += 1
        return kept, index
    finally:
        capture.release()


def _reported_frame_count(path: Path, cv2) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(path, "OpenCV cannot open it (not a video, a corrupted or truncated file, "
                                       "or a codec this OpenCV build lacks)")
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    return int(count) if np.isfinite(count) and count > 0 else 0


def read_video(path, num_frames: int | None = 10, *, size: int | None = 518, crop: str | None = "center",
               dtype: torch.dtype = torch.uint8, truncated: str = "warn") -> Tensor:
    """Reads ``num_frames`` RGB frames sampled uniformly from a video file, prepared as VideoGPA
    prepares them for the geometry model.

    Sampling: frame indices ``numpy.linspace(0, total - 1, num_frames).astype(int)``; every frame
    when the video has fewer than ``num_frames`` frames or ``num_frames`` is None. Preparation
    (:func:`prepare_frames`): centre-crop to a square, resize to ``size`` x ``size`` with
    bilinear interpolation; ``size=None`` keeps the crop's size, ``crop=None`` skips the crop.

    ``total`` is the number of frames that actually decode. The video is decoded in order from
    its first frame to its end (seeking is unreliable across codecs, and the frame count a
    container reports can be wrong); only the sampled frames are converted and kept. When the
    count that decodes differs from the reported one (a truncated stream, a wrong header), the
    video is decoded a second time to read the frames sampled from what decodes; fewer frames
    than reported also gives a ``UserWarning`` naming the file (a truncated file often still
    opens and decodes its first frames); with ``truncated="error"`` it raises
    :class:`TruncatedVideoError` instead, for callers that pair the frames with data made from
    another decode of the video (e.g. its geometry).

    Returns (T, 3, size, size) on the CPU: uint8, or float32 = uint8 / 255 in [0, 1] (the
    resize runs on the uint8 frames). Raises :class:`VideoReadError` (an ``OSError``) naming the
    file for a missing, empty, unreadable, corrupted or undecodable file, and for a path that is
    not a regular file (a FIFO or a device, refused before it is opened: reading one could block).
    """
    op = "read_video"
    _check_num_frames(op, num_frames)
    _check_size(op, size)
    _check_crop(op, crop)
    if dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"{op}: dtype must be torch.uint8 or torch.float32, got {dtype!r}")
    if truncated not in ("warn", "error"):
        raise ValueError(f'{op}: truncated must be "warn" or "error", got {truncated!r}')
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    cv2 = import_cv2()
    _check_readable(path)

    reported = _reported_frame_count(path, cv2)
    # First pass: trust the reported count to pick the frames to keep (all of them when
    # num_frames is None; none, i.e. only count, when nothing is reported). It counts the
    # frames that really decode.
    if num_frames is None:
        wanted = None
    else:
        wanted = set(sample_indices(reported, num_frames)) if reported else set()
    kept, total = _decode(path, wanted, size, crop, cv2)
    if total == 0:
        raise VideoReadError(path, "no frame could be decoded (an empty, truncated or corrupted stream)")
    if total < reported and truncated == "error":
        raise TruncatedVideoError(path, reported, total)
    if total < reported:
        warnings.warn(f"read_video: {path}: {reported} frames reported but only {total} decode "
                      "(a truncated or damaged file?); sampling from the frames that decode", stacklevel=2)
    indices = sample_indices(total, num_frames)
    if not set(indices) <= kept.keys():
        kept, again = _decode(path, set(indices), size, crop, cv2)
        if again != total:
            raise VideoReadError(path, f"two decodes gave different frame counts ({total}, {again})")
    out = torch.from_numpy(np.stack([kept[i] for i in indices])).permute(0, 3, 1, 2).contiguous()
    return out if dtype == torch.uint8 else out.float().div_(255)


# --------------------------------------------------------------------------------------------
# Writing


def _frames_to_hwc_uint8(op, frames) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, Tensor):
        raise TypeError(f"{op}: frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dim() != 4 or (frames.shape[1] != 3 and frames.shape[3] != 3):
        raise ValueError(f"{op}: frames must be (T, 3, H, W) or (T, H, W, 3), got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0 or 0 in frames.shape[1:]:
        raise ValueError(f"{op}: frames is empty (shape {tuple(frames.shape)}); a video needs at least one frame")
    frames = _frames_to_uint8(op, "frames", frames.detach().cpu())
    if frames.shape[1] == 3:  # channels first wins when both readings fit, i.e. (T, 3, H, 3)
        frames = frames.permute(0, 2, 3, 1)
    return frames.contiguous().numpy()


def write_video(path, frames, fps: float = 8) -> Path:
    """Writes RGB frames to a video file; creates the parent folders. Returns the path.

    frames: (T, 3, H, W) or (T, H, W, 3) (channels first when both fit), a tensor or numpy
    array, uint8 or floating point in [0, 1] (stored as round(255 x)).
    The container follows the suffix: ``.mp4`` is MPEG-4 part 2 (fourcc mp4v, which
    opencv-python-headless writes; H and W must be even), ``.avi`` Motion-JPEG (any size).
    Both are lossy: expect a few levels of difference per pixel when reading back.
    Raises :class:`VideoWriteError` (an ``OSError``) naming the file when OpenCV cannot write it.
    """
    op = "write_video"
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(f"{op}: {path}: unsupported suffix {path.suffix!r}; use one of {sorted(_WRITERS)}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{op}: {path}: fps must be a positive finite number, got {fps!r}")
    images = _frames_to_hwc_uint8(op, frames)
    height, width = images.shape[1:3]
    if suffix == ".mp4" and (height % 2 or width % 2):
        # OpenCV would silently drop the odd row / column.
        raise ValueError(f"{op}: {path}: mp4 (mp4v) stores even sides only and the frames are {height} x {width}; "
                         "crop or pad them to even sides, or write an .avi (Motion-JPEG, any size)")
    cv2 = import_cv2()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VideoWriteError(path, f"cannot create its folder ({exc.strerror or exc})") from exc
    fourcc = cv2.VideoWriter_fourcc(*_WRITERS[suffix])
    api = cv2.CAP_OPENCV_MJPEG if suffix == ".avi" else cv2.CAP_FFMPEG
    writer = cv2.VideoWriter(str(path), api, fourcc, float(fps), (width, height))
    try:
        if not writer.isOpened():
            raise VideoWriteError(path, f"OpenCV cannot open a {_WRITERS[suffix]} writer for it "
                                        "(an unwritable location, or a build without that encoder)")
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoWriteError(path, "OpenCV wrote no data")
    return path
