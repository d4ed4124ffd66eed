"""Preference pairs of precomputed latents: VideoGPA's meta_data.json groups and vgpa's JSONL.

Tensor files are ``.pt``/``.pth`` (``torch.save``, loaded with ``weights_only=True``) or
``.safetensors``, holding one tensor or a dict of tensors:

- video latents: (C, F, H, W) as :func:`vgpa.training.encode_video` writes them (one sample),
  alone or under the key ``latents``;
- a conditioning file: the prompt embeddings (L, D), alone or under ``prompt_embeds`` or
  ``encoder_hidden_states`` (VideoGPA's key), and, for image-to-video, the image latents
  (C, 1, H, W) under ``image_latents`` (see :func:`vgpa.training.encode_image`).

Relative paths are resolved against ``data_root`` (default: the folder of the pairs file).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import safetensors.torch
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..pairs import MIN_GAP, MIN_MOTION, MOTION_KEY, SCORE_KEY, select_videogpa_pair, unusable_video
from .dpo_step import PreferenceBatch

TENSOR_SUFFIXES = (".pt", ".pth", ".safetensors")
LATENTS_KEYS = ("latents",)
PROMPT_EMBEDS_KEYS = ("prompt_embeds", "encoder_hidden_states")
IMAGE_LATENTS_KEYS = ("image_latents",)

PathLike = Union[str, Path]


class UnusableVideoWarning(UserWarning):
    """A scored groups file holds videos whose score or motion is not a finite number."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair on disk: winner and loser latents, the conditioning file (prompt
    embeddings, and image latents for I2V), optionally a separate image-latents file."""

    winner: Path
    loser: Path
    condition: Path
    image_latents: Optional[Path] = None
    prompt: str = ""


# --------------------------------------------------------------------------------------------
# Tensor files


def load_tensor_file(path: PathLike) -> Union[Tensor, dict]:
    """The tensor, or dict of tensors, stored in a .pt/.pth or .safetensors file."""
    path = Path(path)
    if path.suffix not in TENSOR_SUFFIXES:
        raise ValueError(f"{path}: unsupported tensor file type {path.suffix!r}; use one of {TENSOR_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _pick(content, keys, path, what: str, required: bool = True) -> Optional[Tensor]:
    """The tensor under the first of ``keys``; a lone tensor (or a one-entry dict) when
    ``required`` and none of the keys is there."""
    if isinstance(content, Tensor):
        return content if required else None
    if not isinstance(content, dict):
        raise TypeError(f"{path}: expected a tensor or a dict of tensors, found {type(content).__name__}")
    for key in keys:
        if key in content:
            return content[key]
    if required and len(content) == 1:
        return next(iter(content.values()))
    if required:
        raise KeyError(f"{path}: no {what} under any of the keys {keys}; found keys {sorted(content)}")
    return None


def _resolve(root: Path, name, where: str, what: str) -> Path:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: {what} must be a non-empty path string, got {name!r}")
    path = Path(name)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {what} {path} does not exist")
    return path


# --------------------------------------------------------------------------------------------
# VideoGPA meta_data.json


def load_videogpa_pairs(path: PathLike, *, data_root: Optional[PathLike] = None, score_key: str = SCORE_KEY,
                        motion_key: str = MOTION_KEY, min_motion: float = MIN_MOTION,
                        min_gap: float = MIN_GAP, strict: bool = False) -> list[PreferencePair]:
    """Pairs from VideoGPA's ``{"groups": [{"prompt", "videos": [...]}, ...]}`` file.

    Each video names ``latent_path`` (its latents), ``condition_path`` (its conditioning file;
    the winner's is used: a group shares its prompt) and carries ``score_key`` and
    ``motion_key``. One pair per group, chosen by :func:`select_videogpa_pair`.

    Videos whose score or motion is there but is not a finite number (a string, NaN, inf) are
    left out with a warning that counts them and names the first; with ``strict`` the first one
    raises ValueError naming its group and index instead.
    """
    path = Path(path)
    root = Path(data_root) if data_root is not None else path.parent
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("groups"), list):
        raise ValueError(f"{path}: expected VideoGPA's format, an object with a 'groups' list")
    pairs, unusable = [], []
    for index, group in enumerate(meta["groups"]):
        where = f"{path}: group {group.get('group_id', index) if isinstance(group, dict) else index}"
        if not isinstance(group, dict) or not isinstance(group.get("videos"), list):
            raise ValueError(f"{where}: expected an object with a 'videos' list")
        for position, video in enumerate(group["videos"]):
            reason = unusable_video(video, score_key, motion_key)
            if reason is not None:
                if strict:
                    raise ValueError(f"{where}: video {position} {reason}")
                unusable.append(f"{where}: video {position} {reason}")
        chosen = select_videogpa_pair(group["videos"], score_key=score_key, motion_key=motion_key,
                                      min_motion=min_motion, min_gap=min_gap)
        if chosen is None:
            continue
        winner, loser = chosen
        pairs.append(PreferencePair(
            winner=_resolve(root, winner.get("latent_path"), where, "winner latent_path"),
            loser=_resolve(root, loser.get("latent_path"), where, "loser latent_path"),
            condition=_resolve(root, winner.get("condition_path"), where, "winner condition_path"),
            prompt=str(group.get("prompt", "")),
        ))
    if unusable:
        warnings.warn(f"{path}: left out {len(unusable)} video(s) whose {score_key!r} or {motion_key!r} is not a "
                      f"finite number (first: {unusable[0].removeprefix(f'{path}: ')}); pass strict=True to "
                      "make this an error", UnusableVideoWarning, stacklevel=2)
    return pairs


# --------------------------------------------------------------------------------------------
# vgpa JSONL


def load_jsonl_pairs(path: PathLike, *, data_root: Optional[PathLike] = None) -> list[PreferencePair]:
    """Pairs from vgpa's JSONL: one object per line with ``winner`` and ``loser`` (latent
    files), ``prompt_embeds`` (conditioning file), optional ``image_latents`` (file) and
    optional ``prompt`` (text, for logs). Blank lines are skipped."""
    path = Path(path)
    root = Path(data_root) if data_root is not None else path.parent
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in ("winner", "loser", "prompt_embeds") if key not in record]
        if missing:
            raise ValueError(f"{where}: missing {missing}; each line needs 'winner', 'loser' and 'prompt_embeds'")
        image = record.get("image_latents")
        pairs.append(PreferencePair(
            winner=_resolve(root, record["winner"], where, "winner latents"),
            loser=_resolve(root, record["loser"], where, "loser latents"),
            condition=_resolve(root, record["prompt_embeds"], where, "prompt_embeds"),
            image_latents=None if image is None else _resolve(root, image, where, "image_latents"),
            prompt=str(record.get("prompt", "")),
        ))
    return pairs


def load_preference_pairs(path: PathLike, *, data_root: Optional[PathLike] = None,
                          **selection) -> list[PreferencePair]:
    """Pairs from a ``.jsonl`` (vgpa) or ``.json`` (VideoGPA meta_data) file; ``selection``
    (score_key, motion_key, min_motion, min_gap, strict) applies to the VideoGPA format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    if path.suffix == ".jsonl":
        if selection:
            raise ValueError(f"{sorted(selection)} apply to VideoGPA's meta_data.json, not to JSONL pairs")
        return load_jsonl_pairs(path, data_root=data_root)
    if path.suffix == ".json":
        return load_videogpa_pairs(path, data_root=data_root, **selection)
    raise ValueError(f"{path}: pairs files are .jsonl (vgpa) or .json (VideoGPA meta_data), not {path.suffix!r}")


# --------------------------------------------------------------------------------------------
# Dataset


class PreferencePairDataset(Dataset):
    """Loads the tensors of :class:`PreferencePair` s; batch them with :func:`collate_preference_pairs`."""

    def __init__(self, pairs: list[PreferencePair]):
        if not pairs:
            raise ValueError("no preference pairs: the pairs file is empty or every group was filtered out "
                             "(motion threshold, min_gap)")
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        winner = _pick(load_tensor_file(pair.winner), LATENTS_KEYS, pair.winner, "latents")
        loser = _pick(load_tensor_file(pair.loser), LATENTS_KEYS, pair.loser, "latents")
        if winner.dim() != 4:
            raise ValueError(f"{pair.winner}: latents must be (C, F, H, W), got shape {tuple(winner.shape)}")
        if winner.shape != loser.shape:
            raise ValueError(f"winner latents {pair.winner} have shape {tuple(winner.shape)} but loser latents "
                             f"{pair.loser} have shape {tuple(loser.shape)}; a pair needs equal shapes")
        condition = load_tensor_file(pair.condition)
        prompt_embeds = _pick(condition, PROMPT_EMBEDS_KEYS, pair.condition, "prompt embeddings")
        if prompt_embeds.dim() != 2:
            raise ValueError(f"{pair.condition}: prompt embeddings must be (L, D), got shape "
                             f"{tuple(prompt_embeds.shape)}")
        if pair.image_latents is not None:
            image = _pick(load_tensor_file(pair.image_latents), IMAGE_LATENTS_KEYS, pair.image_latents,
                          "image latents")
        else:
            image = _pick(condition, IMAGE_LATENTS_KEYS, pair.condition, "image latents", required=False)
        if image is not None and image.dim() != 4:
            raise ValueError(f"image latents of pair {index} must be (C, F_img, H, W), got shape "
                             f"{tuple(image.shape)}")
        return {"winner_latents": winner, "loser_latents": loser, "prompt_embeds": prompt_embeds,
                "image_latents": image}


def collate_preference_pairs(items: list[dict]) -> PreferenceBatch:
    """Stack dataset items into a :class:`vgpa.training.PreferenceBatch`."""
    def stack(key):
        shapes = {tuple(item[key].shape) for item in items}
        if len(shapes) > 1:
            raise ValueError(f"the pairs of one batch have different {key} shapes {sorted(shapes)}; use batch "
                             "size 1 or batch pairs of one shape")
        return torch.stack([item[key] for item in items])

    with_image = [item["image_latents"] is not None for item in items]
    if any(with_image) and not all(with_image):
        raise ValueError("a batch mixes image-to-video pairs (with image latents) and text-to-video pairs")
    return PreferenceBatch(stack("winner_latents"), stack("loser_latents"), stack("prompt_embeds"),
                           stack("image_latents") if all(with_image) else None)
