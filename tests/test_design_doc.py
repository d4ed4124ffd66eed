"""The design document, docs/design.md, has every section the tree cites, and nothing cites a
design text outside the repository.

Code comments and the README cite the document as `docs/design.md 3.6`; several sections at once
as `docs/design.md 2, 3.1`; a step of a section's numbered list as `docs/design.md 1 step 4`.
Sections are its numbered headings (`## 2. Conventions`, `### 3.1 Depth-warp reprojection error`),
and a section's steps are the numbered list items that start a line inside it. Every tracked text
file is read: a citation of a section or step that does not exist, a link to an anchor of the
document that no heading has, a bare "DESIGN <number>" citation (of a brief the repository does
not hold) and any mention of a path into the shared folder beside the checkout fail, each named
by file and line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = "docs/design.md"

pytestmark = pytest.mark.skipif(not ((REPO / ".git").exists() and (REPO / "setup.py").exists()),
                                reason="needs the source checkout (this run tests an installed wheel from a copy of "
                                       "tests/)")

# What the code cites today; the document keeps these numbers (see its introduction).
REQUIRED_SECTIONS = {"1", "2", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "4", "5", "6"}
RECIPE_STEPS = {1, 2, 3, 4, 5}

HEADING = re.compile(r"^#{1,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]+\S")
STEP = re.compile(r"^(\d+)\.[ \t]")
REFERENCE = r"\d+(?:\.\d+)*(?: step \d+)?"
CITATION = re.compile(r"docs/design\.md (" + REFERENCE + r"(?:, " + REFERENCE + r")*)")
# The old form, which named a brief outside the repository.
BARE_CITATION = re.compile(r"\bDESIGN(?:\.md)?,?[ \t]+(?:§[ \t]*)?\d+(?:\.\d+)*")
OUTSIDE_PATHS = ("../" + "shared", "shared/" + "DESIGN")
LINK = re.compile(r"docs/design\.md#([\w-]+)")


def sections(text: str) -> dict[str, set[int]]:
    """{section number: the step numbers of the numbered lists inside it} of a design text."""
    found: dict[str, set[int]] = {}
    current = None
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = HEADING.match(line)
        if heading:
            current = heading.group(1)
            found.setdefault(current, set())
        elif line.startswith("#"):
            current = None  # an unnumbered heading ends the numbered section before it
        elif current is not None and STEP.match(line):
            found[current].add(int(STEP.match(line).group(1)))
    return found


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text: lower case, punctuation but
    hyphens and underscores dropped, spaces made hyphens (duplicates left aside)."""
    found = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6}[ \t]", line):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def citations(text: str) -> list[tuple[int, str, str | None]]:
    """(line, section, step or None) of every citation of the design document in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in CITATION.finditer(line):
            for reference in match.group(1).split(", "):
                section, _, step = reference.partition(" step ")
                found.append((number, section, step or None))
    return found


def problems(files: list[tuple[str, str]], design_text: str) -> list[str]:
    """'path:line: why' for every citation of a section or step the design text lacks, every link
    to an anchor it lacks, every bare DESIGN citation and every path out of the repository to the
    shared brief."""
    design, targets = sections(design_text), anchors(design_text)
    found = []
    for path, text in files:
        for line, section, step in citations(text):
            if section not in design:
                found.append(f"{path}:{line}: cites {DESIGN} {section}, which has no section {section}")
            elif step is not None and int(step) not in design[section]:
                found.append(f"{path}:{line}: cites {DESIGN} {section} step {step}, but section {section} has no "
                             f"step {step}")
        for number, content in enumerate(text.splitlines(), 1):
            for match in LINK.finditer(content):
                if match.group(1) not in targets:
                    found.append(f"{path}:{number}: links {DESIGN}#{match.group(1)}, but no heading of {DESIGN} "
                                 "has that anchor")
            for match in BARE_CITATION.finditer(content):
                found.append(f"{path}:{number}: cites {match.group(0)!r}, a brief outside the repository; cite "
                             f"{DESIGN} <section> instead")
            for outside in OUTSIDE_PATHS:
                if outside in content:
                    found.append(f"{path}:{number}: mentions {outside!r}, outside the repository")
    return found


def tracked_text_files() -> list[tuple[str, str]]:
    """(path, text) of every file git tracks that is a regular UTF-8 text file (the links
    vgpa/kernels and vgpa/bench, images and other binaries left out)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("needs git to list the tracked files")
    listing = subprocess.run([git, "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    files = []
    for name in sorted(filter(None, listing.decode().split("\0"))):
        path = REPO / name
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


@pytest.fixture(scope="module")
def tree() -> list[tuple[str, str]]:
    return tracked_text_files()


@pytest.fixture(scope="module")
def design_text() -> str:
    return (REPO / DESIGN).read_text(encoding="utf-8")


def test_the_document_has_the_numbered_sections_and_recipe_steps(design_text):
    design = sections(design_text)
    assert REQUIRED_SECTIONS <= set(design), sorted(REQUIRED_SECTIONS - set(design))
    assert design["1"] == RECIPE_STEPS


def test_the_document_is_tracked(tree):
    assert DESIGN in dict(tree)


def test_every_citation_names_a_section_of_the_document_and_nothing_cites_outside(tree, design_text):
    found = problems(tree, design_text)
    assert not found, "\n".join(found)


def test_the_tree_cites_the_document_in_the_checked_form(tree):
    """Guards the check itself: were the citation form to change, no citation would be found and
    every other test here would pass for nothing."""
    cited = {path for path, text in tree if citations(text)}
    assert len(cited) >= 20, sorted(cited)
    assert {"README.md", "vgpa/ops/epipolar.py", "csrc/render_points.h", "kernels/geometry.py"} <= cited


def test_removing_any_cited_section_fails_naming_its_citations(tree, design_text):
    cited = {section for _, text in tree for _, section, _ in citations(text)}
    assert {"1", "2", "3.1", "3.6", "5"} <= cited
    for section in sorted(cited):
        heading = re.compile(r"^#{1,6}[ \t]+" + re.escape(section) + r"\.?[ \t].*$", re.M)
        assert len(heading.findall(design_text)) == 1, section
        found = problems(tree, heading.sub("## Removed", design_text))
        expected = {(path, line) for path, text in tree for line, cited_section, _ in citations(text)
                    if cited_section == section}
        assert {tuple(f.split(":")[:2]) for f in found} == {(path, str(line)) for path, line in expected}, section
        # A link to the removed heading's anchor sits on its citation's line.
        assert all(f"no section {section}" in f or "has that anchor" in f for f in found), found


def test_the_checker_on_a_small_example():
    cite = DESIGN  # joined to numbers at run time, so the examples cite nothing in this file
    design_text = ("# Design\n\n## 1. Recipe\n\n1. first\n2. second\n   3. nested, not a step\n\n"
                   "## 2. Conventions\n\n```\n## 7. inside a fence, not a section\n```\n\n"
                   "### 3.1 An op (fused)\n\n## Notes\n\n1. not a step of 3.1\n")
    assert sections(design_text) == {"1": {1, 2}, "2": set(), "3.1": set()}
    assert anchors(design_text) == {"design", "1-recipe", "2-conventions", "31-an-op-fused", "notes"}
    files = [
        ("good.py", f"# ({cite} 3.1)\n# {cite} 2, 3.1 and {cite} 1 step 2\nsee [the design]({cite})\n"),
        ("good.md", f"[{cite} 3.1]({cite}#31-an-op-fused)\n"),
        ("missing.cu", f"// fine\n// ({cite} 3.2)\n"),
        ("step.md", f"({cite} 1 step 3)\n"),
        ("list.h", f"// {cite} 2, 3.1, 4\n"),
        ("anchor.md", f"[{cite} 3.1]({cite}#31-an-op)\n"),
        ("bare.py", "x = 1\n# (" + "DESI" + "GN 3.1)\n"),
        ("outside.md", "read " + "../sha" + "red/DESIGN.md first\n"),
    ]
    assert problems(files, design_text) == [
        f"missing.cu:2: cites {cite} 3.2, which has no section 3.2",
        f"step.md:1: cites {cite} 1 step 3, but section 1 has no step 3",
        f"list.h:1: cites {cite} 4, which has no section 4",
        f"anchor.md:1: links {cite}#31-an-op, but no heading of {cite} has that anchor",
        "bare.py:2: cites '" + "DESI" + f"GN 3.1', a brief outside the repository; cite {cite} <section> instead",
        "outside.md:1: mentions '../" + "shared', outside the repository",
        "outside.md:1: mentions 'shared/" + "DESIGN', outside the repository",
    ]
    assert problems(files[:2], design_text) == []
