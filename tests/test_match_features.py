"""OpenCV SIFT matching between frames (vgpa.match_features): matches consistent with a known
warp, frame formats and value ranges, pair selection, the min_matches rule, errors, and the
ImportError without OpenCV."""

import sys

import numpy as np
import pytest
import torch

import vgpa
from vgpa import features

cv2 = pytest.importorskip("cv2", reason="match_features needs OpenCV (the video extra)")

HEIGHT, WIDTH = 120, 160


def texture(height, width, seed):
    """A random multi-scale texture in [0, 1], float32: blurred noise that SIFT finds corners in."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), np.float32)
    for sigma, weight in ((1.0, 0.5), (3.0, 0.3), (8.0, 0.2)):
        out += weight * np.sqrt(sigma) * cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), sigma)
    out -= out.min()
    return out / out.max()


def homography(step):
    """A small rotation, scale and shift about the image centre: frame t = H^t applied to the texture."""
    angle, scale, shift = 0.02 * step, 1 + 0.01 * step, (3.0 * step, -2.0 * step)
    centre = np.array([[1, 0, WIDTH / 2], [0, 1, HEIGHT / 2], [0, 0, 1]])
    move = np.array([[scale * np.cos(angle), -scale * np.sin(angle), shift[0]],
                     [scale * np.sin(angle), scale * np.cos(angle), shift[1]], [0, 0, 1]])
    return centre @ move @ np.linalg.inv(centre)


def warped_video(frames=3, seed=0):
    """(T, H, W) float32 frames in [0, 1] of a textured plane under H^t, and the H^t."""
    base = texture(HEIGHT + 60, WIDTH + 60, seed)[30:30 + HEIGHT, 30:30 + WIDTH].copy()
    maps = [np.linalg.matrix_power(homography(1), t) for t in range(frames)]
    return np.stack([cv2.warpPerspective(base, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR) for m in maps]), maps


def test_matches_follow_the_known_homography():
    video, maps = warped_video(3)
    out = vgpa.match_features(torch.from_numpy(video)[:, None])  # (T, 1, H, W)
    assert out.pairs.tolist() == [[0, 1], [1, 2]] and out.video.tolist() == [0, 0] and out.videos == 1
    assert out.x1.dtype == torch.float32 and out.x1.shape == (int(out.counts.sum()), 2)
    assert (out.counts >= 50).all() and out.valid.all() and torch.equal(out.counts, out.found)
    for (i, j), x1, x2 in zip(out.pairs.tolist(), out.x1.split(out.counts.tolist()), out.x2.split(out.counts.tolist())):
        relative = maps[j] @ np.linalg.inv(maps[i])
        projected = np.c_[x1.numpy(), np.ones(len(x1))] @ relative.T
        error = np.linalg.norm(projected[:, :2] / projected[:, 2:] - x2.numpy(), axis=1)
        assert np.mean(error < 1.0) > 0.95, np.quantile(error, [0.5, 0.9])


def test_frame_layouts_and_value_ranges_give_the_same_matches():
    video, _ = warped_video(3, seed=1)
    grey_uint8 = np.clip(video * 255.0, 0, 255).astype(np.uint8)  # the documented [0, 1] rule
    reference = vgpa.match_features(torch.from_numpy(video)[None, :, None])  # (B, T, C, H, W) float [0, 1]
    rgb = np.repeat(grey_uint8[..., None], 3, axis=-1)  # grey RGB: cvtColor keeps the value
    signed = video.astype(np.float64) * 2 - 1
    signed_uint8 = np.clip((signed + 1) / 2 * 255.0, 0, 255).astype(np.uint8)
    for frames, expected in [
        (grey_uint8[:, None], reference),                                    # (T, C, H, W) uint8 numpy
        (torch.from_numpy(rgb), reference),                                 # (T, H, W, 3) uint8 torch
        (torch.from_numpy(rgb).permute(0, 3, 1, 2)[None], reference),       # (B, T, 3, H, W), not contiguous
        (video[:, None].astype(np.float64), reference),                     # float64 [0, 1]
        (signed[:, None], vgpa.match_features(signed_uint8[:, None])),      # [-1, 1] float
    ]:
        out = vgpa.match_features(frames)
        assert torch.equal(out.x1, expected.x1) and torch.equal(out.x2, expected.x2)
        assert torch.equal(out.counts, expected.counts)
    assert np.array_equal(features.to_grey_uint8(signed[..., None]), signed_uint8)
    assert np.array_equal(features.to_grey_uint8(video[..., None], value_range=(-1, 1)),
                          np.clip((video + 1) / 2 * 255.0, 0, 255).astype(np.uint8))


def test_pairs_batches_and_one_extraction_per_frame(monkeypatch):
    video, _ = warped_video(4, seed=2)
    batch = torch.from_numpy(np.stack([video, video[::-1].copy()]))[:, :, None]  # (2, 4, 1, H, W)
    calls = []
    original = cv2.SIFT_create

    class CountingSift:
        def __init__(self, *args, **kwargs):
            self.sift = original(*args, **kwargs)

        def detectAndCompute(self, image, mask):
            calls.append(image.shape)
            return self.sift.detectAndCompute(image, mask)

    monkeypatch.setattr(cv2, "SIFT_create", CountingSift)
    out = vgpa.match_features(batch, [(0, 2), (2, 1), (1, 0)])
    assert len(calls) == 2 * 3  # frames 0, 1, 2 of each video, once each; frame 3 unused
    assert out.pairs.tolist() == [[0, 2], [2, 1], [1, 0]] * 2 and out.video.tolist() == [0, 0, 0, 1, 1, 1]
    # Video 1 is video 0 reversed: its pair (2, 1) is video 0's (1, 2).
    alone = vgpa.match_features(torch.from_numpy(video)[:, None], [(1, 2)])
    rows = out.counts.cumsum(0)
    start = int(rows[3])
    assert out.counts[4] == alone.counts[0]
    assert torch.equal(out.x1[start:start + int(out.counts[4])], alone.x1)


def test_min_matches_and_featureless_frames():
    video, _ = warped_video(3, seed=3)
    flat = np.full_like(video, 0.5)
    frames = torch.from_numpy(np.stack([video, flat]))[:, :, None]
    out = vgpa.match_features(frames)
    assert out.valid.tolist() == [True, True, False, False]
    assert out.counts[2:].eq(0).all() and out.found[2:].eq(0).all()
    assert out.x1.shape[0] == int(out.counts.sum())
    strict = vgpa.match_features(frames, min_matches=100000)
    assert strict.counts.eq(0).all() and strict.x1.shape == (0, 2) and torch.equal(strict.found, out.found)
    few = vgpa.match_features(frames, max_keypoints=30)
    assert (few.found[:2] <= 30).all()


def test_bad_inputs_raise_clear_errors():
    video, _ = warped_video(2, seed=4)
    frames = torch.from_numpy(video)[:, None]
    m = vgpa.match_features
    cases = [
        (TypeError, "frames must be a torch.Tensor or a numpy array", lambda: m(video.tolist())),
        (TypeError, "frames must be uint8 or floating-point", lambda: m(frames.int())),
        (ValueError, "frames must be", lambda: m(frames[:, 0])),
        (ValueError, "frames must be", lambda: m(frames.expand(-1, 2, -1, -1))),
        (ValueError, r"pairs hold frame indices in \[0, 2\] but frames has 2 frames", lambda: m(frames, [(0, 2)])),
        (ValueError, r"frames must be non-empty .* got shape \(2, 1, 0, 160\)", lambda: m(frames[:, :, :0])),
        (ValueError, r"frames must be non-empty .* got shape \(2, 1, 120, 0\)", lambda: m(frames[..., :0])),
        (ValueError, r"frames must be non-empty .* got shape \(2, 0, 160, 1\)",
         lambda: m(video[:, :0, :, None])),  # numpy (T, H, W, C) of height 0
        (ValueError, r"frames must be non-empty .* got shape \(0, 2, 1, 120, 160\)", lambda: m(frames[None][:0])),
        (ValueError, "needs T >= 2|need T >= 2", lambda: m(frames[:1])),
        (ValueError, "ratio must be a number in", lambda: m(frames, ratio=1.5)),
        (ValueError, "min_matches must be an int", lambda: m(frames, min_matches=-1)),
        (ValueError, "max_keypoints must be None or an int", lambda: m(frames, max_keypoints=0)),
        (ValueError, "value_range must be None", lambda: m(frames, value_range=(0, 255))),
        (ValueError, "value_range must be None", lambda: m(frames, value_range=1)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match="^match_features: .*(" + message + ")"):
            call()


def test_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "vgpa\[video\]"'):
        vgpa.match_features(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ImportError, match=r'pip install "vgpa\[video\]"'):
        vgpa.metrics.epipolar_score(torch.zeros(2, 1, 8, 8))
