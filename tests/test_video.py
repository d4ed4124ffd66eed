"""vgpa.video: reading with VideoGPA's sampling and preparation, writing, and the errors of bad
files. Frames that encode their index as a grey level let a test read back which frame it got
(within the codec's error: levels are 15 apart, the lossy codecs stay within a few levels)."""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

cv2 = pytest.importorskip("cv2", reason="vgpa.video needs the video extra (opencv-python-headless)")

from vgpa.video import (TruncatedVideoError, VideoReadError, VideoWriteError, prepare_frames,  # noqa: E402
                        read_video, sample_indices, write_video)

from fifo_watchdog import fifo_watchdog  # noqa: E402

LEVEL = 15  # grey level step between consecutive frames


def level_frames(count, height, width):
    """(count, 3, H, W) uint8, frame i a solid grey LEVEL * i."""
    return (torch.arange(count, dtype=torch.uint8) * LEVEL).view(count, 1, 1, 1).expand(count, 3, height, width)


def decoded_indices(video):
    """The frame index each decoded frame of ``level_frames`` encodes; fails when a frame is not
    close to one level."""
    means = video.float().mean((1, 2, 3))
    if video.is_floating_point():
        means = means * 255
    indices = (means / LEVEL).round()
    assert (means - indices * LEVEL).abs().max() <= 6, means
    return indices.long().tolist()


def linspace_indices(total, count):
    return np.linspace(0, total - 1, count).astype(int).tolist()


def smooth_frames(count, height, width, seed=0):
    """A smooth random brightness gradient plus a random tint per frame and channel: little
    fine detail and a smooth chroma, so the lossy codecs (4:2:0 chroma) err little, while
    swapped channels would not."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 3, 3, generator=g)
    light = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True) * 150 + 50
    tint = torch.rand(count, 3, 1, 1, generator=g) * 50 - 25
    return (light + tint).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
@pytest.mark.parametrize("height,width", [(38, 50), (50, 38)])
def test_samples_linspace_indices_and_centre_crops(tmp_path, suffix, height, width):
    path = write_video(tmp_path / f"v{suffix}", level_frames(17, height, width))
    video = read_video(path, 10, size=None)
    side = min(height, width)
    assert video.shape == (10, 3, side, side) and video.dtype == torch.uint8
    assert decoded_indices(video) == linspace_indices(17, 10)
    assert decoded_indices(read_video(path, 3, size=None)) == linspace_indices(17, 3) == [0, 8, 16]
    assert decoded_indices(read_video(path, 1, size=None)) == [0]


def test_fewer_frames_than_requested_gives_all_in_order(tmp_path):
    path = write_video(tmp_path / "short.mp4", level_frames(4, 32, 48))
    assert decoded_indices(read_video(path, 10, size=16)) == [0, 1, 2, 3]
    assert decoded_indices(read_video(path, 4, size=16)) == [0, 1, 2, 3]
    assert decoded_indices(read_video(path, None, size=16)) == [0, 1, 2, 3]


def test_num_frames_none_reads_every_frame(tmp_path):
    path = write_video(tmp_path / "v.avi", level_frames(13, 20, 30))
    assert decoded_indices(read_video(path, None, size=None)) == list(range(13))


def test_sample_indices_is_numpy_linspace_truncated():
    for total in (1, 2, 9, 10, 11, 49, 97):
        for count in (1, 2, 3, 10):
            expected = list(range(total)) if count >= total else linspace_indices(total, count)
            assert sample_indices(total, count) == expected
    assert sample_indices(5, None) == [0, 1, 2, 3, 4]


class _ReportsFrames:
    """A cv2.VideoCapture that reports ``count`` frames, whatever the file holds."""

    real = cv2.VideoCapture
    count = 0

    def __init__(self, *args):
        self._capture = self.real(*args)

    def get(self, prop):
        return float(self.count) if prop == cv2.CAP_PROP_FRAME_COUNT else self._capture.get(prop)

    def __getattr__(self, name):
        return getattr(self._capture, name)


@pytest.mark.parametrize("reported", [0, -1, 5, 16, 18, 40])
def test_wrong_reported_frame_count_samples_from_what_decodes(tmp_path, monkeypatch, reported):
    path = write_video(tmp_path / "v.mp4", level_frames(17, 16, 16))
    monkeypatch.setattr(cv2, "VideoCapture", type("Lying", (_ReportsFrames,), {"count": reported}))
    for num_frames, expected in [(10, linspace_indices(17, 10)), (None, list(range(17)))]:
        if reported > 17:
            with pytest.warns(UserWarning, match=f"{reported} frames reported but only 17 decode"):
                video = read_video(path, num_frames, size=None)
        else:
            video = read_video(path, num_frames, size=None)
        assert decoded_indices(video) == expected


# --------------------------------------------------------------------------------------------
# Preparation


@pytest.mark.parametrize("height,width", [(37, 50), (50, 37), (36, 50), (21, 21)])
def test_prepare_frames_centre_crop_offsets(height, width):
    frames = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    expected = frames[:, :, top:top + side, left:left + side]
    assert torch.equal(prepare_frames(frames, size=None), expected)
    assert torch.equal(prepare_frames(frames, size=None, crop=None), frames)


@pytest.mark.parametrize("size", [9, 24, 64])
@pytest.mark.parametrize("crop", ["center", None])
def test_prepare_frames_resize_is_half_pixel_bilinear(size, crop):
    """cv2.INTER_LINEAR = bilinear with pixel centres at +0.5 and no antialiasing, i.e.
    F.interpolate(mode="bilinear", align_corners=False, antialias=False)."""
    frames = torch.rand(2, 3, 23, 31, dtype=torch.float64)
    cropped = frames[:, :, :, 4:27] if crop else frames
    expected = F.interpolate(cropped, size=(size, size), mode="bilinear", align_corners=False)
    out = prepare_frames(frames, size=size, crop=crop)
    assert out.dtype == torch.float64 and out.shape == (2, 3, size, size)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    out8 = prepare_frames((frames * 255).round().to(torch.uint8), size=size, crop=crop)
    assert out8.dtype == torch.uint8
    assert (out8.float() - expected.float() * 255).abs().max() <= 1.5  # OpenCV's fixed-point uint8 path


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16, torch.bfloat16])
def test_prepare_frames_keeps_dtype_and_accepts_strided_input(dtype):
    base = torch.rand(3, 20, 30, 3) * (255 if dtype == torch.uint8 else 1)
    frames = base.to(dtype).permute(0, 3, 1, 2)  # channels-last storage: not contiguous
    assert not frames.is_contiguous()
    out = prepare_frames(frames, size=12)
    assert out.dtype == dtype and out.shape == (3, 3, 12, 12) and out.is_contiguous()
    again = prepare_frames(frames.contiguous(), size=12)
    assert torch.equal(out, again)


def test_prepare_frames_empty_and_single_channel():
    assert prepare_frames(torch.zeros(0, 3, 10, 20, dtype=torch.uint8), size=None).shape == (0, 3, 10, 10)
    assert prepare_frames(torch.zeros(0, 3, 10, 20), size=7).shape == (0, 3, 7, 7)
    assert prepare_frames(torch.zeros(0, 3, 10, 20), size=None, crop=None).shape == (0, 3, 10, 20)
    grey = torch.rand(2, 1, 10, 14)
    assert prepare_frames(grey, size=5).shape == (2, 1, 5, 5)


def test_prepare_frames_argument_errors():
    frames = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="size"):
        prepare_frames(frames, size=0)
    with pytest.raises(ValueError, match="crop"):
        prepare_frames(frames, crop="left")
    with pytest.raises(ValueError, match="frames"):
        prepare_frames(frames[0])
    with pytest.raises(TypeError, match="frames"):
        prepare_frames(frames.int())
    with pytest.raises(TypeError, match="frames"):
        prepare_frames(frames.numpy())


def test_read_video_prepares_as_prepare_frames(tmp_path):
    """read_video(size=S) = prepare_frames of the full decoded frames (one implementation)."""
    path = write_video(tmp_path / "v.mp4", smooth_frames(9, 40, 64))
    full = read_video(path, None, size=None, crop=None)
    for size, crop in [(24, "center"), (50, "center"), (24, None), (None, "center")]:
        assert torch.equal(read_video(path, None, size=size, crop=crop), prepare_frames(full, size=size, crop=crop))
    assert torch.equal(read_video(path, 4, size=24), prepare_frames(full[linspace_indices(9, 4)], size=24))


def test_float_dtype_is_uint8_over_255(tmp_path):
    path = write_video(tmp_path / "v.avi", smooth_frames(5, 30, 40))
    as_float = read_video(path, 3, size=17, dtype=torch.float32)
    as_uint8 = read_video(path, 3, size=17)
    assert as_float.dtype == torch.float32 and 0 <= as_float.min() and as_float.max() <= 1
    assert torch.equal(as_float, as_uint8.float() / 255)


# --------------------------------------------------------------------------------------------
# Round trips and writing


@pytest.mark.parametrize("suffix,height,width", [(".mp4", 38, 50), (".mp4", 50, 38), (".avi", 37, 50),
                                                 (".avi", 50, 37)])
def test_round_trip_within_codec_error(tmp_path, suffix, height, width):
    frames = smooth_frames(6, height, width)
    path = write_video(tmp_path / "deep" / "er" / f"v{suffix}", frames, fps=12)
    assert path.is_file()
    back = read_video(path, None, size=None, crop=None)
    assert back.shape == frames.shape and back.dtype == torch.uint8
    error = (back.float() - frames.float()).abs()
    # Per channel: swapped channels or a shifted image would be off by tens of levels.
    assert error.mean((0, 2, 3)).max() < 3 and error.quantile(0.99) < 12, (error.mean(), error.quantile(0.99))
    # channels-last input and floats in [0, 1] write the same video
    path2 = write_video(tmp_path / f"hwc{suffix}", frames.permute(0, 2, 3, 1))
    path3 = write_video(tmp_path / f"float{suffix}", frames.float() / 255)
    assert torch.equal(read_video(path2, None, size=None, crop=None), back)
    assert torch.equal(read_video(path3, None, size=None, crop=None), back)


@pytest.mark.parametrize("suffix,height,width", [(".avi", 1, 1), (".avi", 1, 3), (".mp4", 2, 2)])
def test_tiny_videos(tmp_path, suffix, height, width):
    path = write_video(tmp_path / f"v{suffix}", level_frames(7, height, width))
    assert decoded_indices(read_video(path, None, size=None, crop=None)) == list(range(7))
    video = read_video(path, 3, size=4)
    assert video.shape == (3, 3, 4, 4) and decoded_indices(video) == linspace_indices(7, 3)


def test_odd_sized_video_is_cropped_and_resized(tmp_path):
    path = write_video(tmp_path / "odd.avi", smooth_frames(5, 37, 50))
    assert read_video(path, 3, size=None).shape == (3, 3, 37, 37)
    assert read_video(path, 3, size=14).shape == (3, 3, 14, 14)
    assert read_video(path, 3, size=None, crop=None).shape == (3, 3, 37, 50)


def test_write_video_errors_name_the_file(tmp_path):
    frames = level_frames(3, 16, 16)
    with pytest.raises(ValueError, match=r"odd\.mp4.*even"):
        write_video(tmp_path / "odd.mp4", level_frames(3, 17, 16))
    with pytest.raises(ValueError, match=r"v\.mkv.*suffix"):
        write_video(tmp_path / "v.mkv", frames)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.mp4", frames, fps=0)
    with pytest.raises(ValueError, match=r"frames.*\[0, 1\]"):
        write_video(tmp_path / "v.mp4", frames.float())  # 0..30, not [0, 1]
    with pytest.raises(ValueError, match="NaN"):
        write_video(tmp_path / "v.mp4", torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "v.mp4", frames[:0])
    with pytest.raises(ValueError, match="frames"):
        write_video(tmp_path / "v.mp4", frames[0])
    with pytest.raises(TypeError, match="frames"):
        write_video(tmp_path / "v.mp4", frames.int())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(VideoWriteError, match=r"a_file/v\.mp4"):
        write_video(blocker / "v.mp4", frames)


# --------------------------------------------------------------------------------------------
# Bad files


def test_missing_empty_garbage_and_directory_raise_video_read_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases = [(tmp_path / "missing.mp4", "no such file"), (empty, "empty"), (garbage, "cannot open"),
             (tmp_path, "directory")]
    for path, reason in cases:
        with pytest.raises(VideoReadError, match=reason) as info:
            read_video(path)
        assert str(path) in str(info.value) and info.value.path == str(path)
        assert isinstance(info.value, OSError)


@pytest.mark.parametrize("where", ["a third", "half", "into the index"])
def test_truncated_mp4_raises(tmp_path, where):
    """OpenCV's mp4 has its index (the moov box) after the frames: a cut anywhere before the
    index's end leaves a file that does not open."""
    data = write_video(tmp_path / "v.mp4", level_frames(10, 16, 16)).read_bytes()
    end = {"a third": len(data) // 3, "half": len(data) // 2, "into the index": data.index(b"moov") + 64}[where]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:end])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_video(cut)


def test_truncated_stream_samples_what_decodes_and_warns(tmp_path):
    """An AVI cut mid-stream still opens: the frames that decode are sampled, with a warning
    that names the file; the surviving frames are the video's first ones."""
    data = write_video(tmp_path / "v.avi", level_frames(17, 16, 16)).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(UserWarning, match=r"cut\.avi: 17 frames reported but only"):
        video = read_video(cut, None, size=None)
    assert 0 < len(video) < 17
    good = len(video) - 1  # the last frame may be cut through
    assert decoded_indices(video[:good]) == list(range(good))


def test_truncated_error_raises_with_both_counts(tmp_path):
    data = write_video(tmp_path / "v.avi", level_frames(17, 16, 16)).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(UserWarning):  # the default: sampled from what decodes
        decoded = len(read_video(cut, None, size=None))
    with pytest.raises(TruncatedVideoError, match=rf"cut\.avi: 17 frames reported but only {decoded} decode") as info:
        read_video(cut, 4, truncated="error")
    assert (info.value.reported, info.value.decoded) == (17, decoded) and isinstance(info.value, VideoReadError)
    whole = write_video(tmp_path / "whole.avi", level_frames(5, 16, 16))
    assert decoded_indices(read_video(whole, None, size=None, truncated="error")) == list(range(5))


def test_a_fifo_or_a_device_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: it is refused before. A watchdog
    opens the FIFO's other end if a reader ever waits on it, so that a regression fails the
    test instead of hanging it."""
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with fifo_watchdog(fifo) as opened:
        with pytest.raises(VideoReadError, match="it is a FIFO, not a regular file"):
            read_video(fifo)
    assert not opened
    with pytest.raises(VideoReadError, match="it is a character device, not a regular file"):
        read_video("/dev/zero")


def test_read_video_argument_errors(tmp_path):
    path = write_video(tmp_path / "v.mp4", level_frames(3, 16, 16))
    for kwargs, name in [({"num_frames": 0}, "num_frames"), ({"num_frames": True}, "num_frames"),
                         ({"size": -1}, "size"), ({"size": 2.5}, "size"), ({"crop": "top"}, "crop"),
                         ({"dtype": torch.float16}, "dtype"), ({"truncated": "ignore"}, "truncated")]:
        with pytest.raises(ValueError, match=name):
            read_video(path, **kwargs)
    with pytest.raises(TypeError, match="path"):
        read_video(3)


def test_missing_opencv_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r'pip install "vgpa\[video\]"'):
        read_video(tmp_path / "v.mp4")
    with pytest.raises(ImportError, match=r'pip install "vgpa\[video\]"'):
        write_video(tmp_path / "v.mp4", level_frames(2, 8, 8))


def test_import_vgpa_imports_no_video_or_model_package():
    import subprocess

    code = ("import sys, vgpa; vgpa.video.read_video, vgpa.geometry.Geometry; "
            "print(sorted(m for m in ('cv2', 'vggt', 'depth_anything_3') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[]"]
