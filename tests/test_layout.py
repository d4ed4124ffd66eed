"""The checkout's root is safe to run Python in: no folder there shadows an installed module.

Python run from the repository root (`python`, `python -m pytest`, a notebook) puts the root first
on sys.path, so a root folder that is a regular package (one with an __init__.py) would be found
before an installed module of the same name. Hugging Face's `kernels`, which transformers imports,
is one; `bench`, `tools`, `examples` and `scripts` are module names on PyPI too. The only packages at
the root are vgpa and vgpa_tools; kernels/ and bench/ are plain folders that the checkout reaches as
vgpa.kernels and vgpa.bench through the links vgpa/kernels and vgpa/bench.
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN_PACKAGES = {"vgpa", "vgpa_tools"}

pytestmark = pytest.mark.skipif(not (REPO / "setup.py").exists(),
                                reason="needs the source tree (this run tests an installed wheel from a copy of tests/)")


def _root_names() -> list[str]:
    """Every folder at the root that Python could import as a package (hidden ones aside). The one
    module there, setup.py, has to stand at the root."""
    return [entry.name for entry in sorted(REPO.iterdir())
            if entry.is_dir() and entry.name.isidentifier() and not entry.name.startswith((".", "_"))]


def _run_from_root(code: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath  # after sys.path[0], the root: where site-packages stands
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_root_folders_are_not_regular_packages_but_vgpa_and_vgpa_tools():
    packages = {name for name in _root_names() if (REPO / name / "__init__.py").exists()}
    assert packages == OWN_PACKAGES


def test_an_installed_module_named_like_a_root_folder_wins_over_it(tmp_path):
    """For every folder at the root but vgpa's own packages (kernels, bench, tests, examples,
    scripts, csrc, docs, ...), a regular package of that name installed after the
    root on sys.path is the one `import NAME` finds."""
    names = [name for name in _root_names() if name not in OWN_PACKAGES]
    assert {"kernels", "bench", "tests", "examples", "scripts"} <= set(names)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("INSTALLED = True\n")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    module = importlib.import_module(name)\n"
            "    assert getattr(module, 'INSTALLED', False), (name, getattr(module, '__file__', None))\n"
            "print('ok')\n")
    result = _run_from_root(code, pythonpath=str(tmp_path))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_vgpa_kernels_and_vgpa_bench_are_the_root_folders():
    code = ("import vgpa.kernels.geometry, vgpa.bench.harness, os\n"
            "print(os.path.realpath(vgpa.kernels.geometry.__file__))\n"
            "print(os.path.realpath(vgpa.bench.harness.__file__))\n")
    result = _run_from_root(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "kernels" / "geometry.py"), str(REPO / "bench" / "harness.py")]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not (_installed("transformers") and _installed("kernels")),
                    reason="needs the train extra with a transformers that depends on Hugging Face's kernels")
def test_hugging_face_kernels_and_the_training_stack_import_from_the_root():
    """transformers imports Hugging Face's `kernels` (from 5.x on); diffusers and peft import
    transformers. From the root, all of them import, and `kernels` is Hugging Face's."""
    code = ("import kernels, transformers\n"
            "from transformers import PreTrainedModel\n"
            "import peft, diffusers\n"
            "print(kernels.__file__)\n")
    result = _run_from_root(code)
    assert result.returncode == 0, result.stderr
    installed = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    assert Path(result.stdout.strip()).resolve() == Path(installed).resolve()
