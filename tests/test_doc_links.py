"""Every relative link of the project's Markdown files (README, docs/, bench/, CHANGELOG) leads
somewhere: the file or folder exists, and an anchor into a Markdown file names one of its
headings (as GitHub makes anchors of headings)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (REPO / ".git").exists() or not (REPO / "setup.py").exists(),
                                reason="needs the source checkout (this run tests an installed wheel from a copy of "
                                       "tests/)")

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$")


def markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / name for name in listed.stdout.split()]


def outside_code(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(m.group(1)) for _, line in outside_code(path.read_text()) if (m := HEADING.match(line))}


def test_anchor_follows_github():
    assert anchor("Build time, and machines without a GPU") == "build-time-and-machines-without-a-gpu"
    assert anchor("3.7 From videos to pairs") == "37-from-videos-to-pairs"
    assert anchor("`vgpa.diffusion_dpo_loss`") == "vgpadiffusion_dpo_loss"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for number, line in outside_code(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            name, _, fragment = target.partition("#")
            destination = (path.parent / name).resolve() if name else path
            if not destination.exists():
                broken.append(f"{number}: {target} (no such file)")
            elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
                broken.append(f"{number}: {target} (no heading has this anchor)")
    assert not broken, f"{path.relative_to(REPO)}:\n" + "\n".join(broken)
