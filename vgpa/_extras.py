"""The optional extras of vgpa (pyproject.toml's [project.optional-dependencies]) by the modules
they provide, so that a script or command checks for its extra first and says what to install."""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules its distributions provide (tests/test_cli_info.py checks this
# against pyproject.toml).
EXTRAS = {
    "train": ("diffusers", "peft", "accelerate", "safetensors", "transformers", "tqdm"),
    "video": ("cv2",),
    "bench": ("kornia", "cv2", "pytest", "pytest_benchmark", "matplotlib"),
    "triton": ("triton",),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def missing_message(extra: str, who: str) -> str | None:
    """What ``who`` says when ``extra`` is not installed, or None when it is."""
    absent = missing(extra)
    if not absent:
        return None
    return f"{who} needs the {extra} extra (missing: {', '.join(absent)}): pip install \"vgpa[{extra}]\""


def require(extra: str, who: str) -> None:
    """Exits (status 2) with the install command when ``extra`` is not installed: for scripts."""
    message = missing_message(extra, who)
    if message is not None:
        raise SystemExit(message)
