"""The examples check their extras first: without them `--help` still works, and a run says in
one line which `pip install "vgpa[...]"` it needs, instead of a ModuleNotFoundError."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vgpa import _extras

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
# Distribution names whose module is named otherwise.
MODULE_OF = {"opencv-python-headless": "cv2", "pytest-benchmark": "pytest_benchmark"}


def _without(modules, script, *args, timeout=300):
    """Runs ``script`` with ``modules`` made unimportable (``sys.modules[name] = None``: import
    raises ImportError and importlib.util.find_spec says None, as for a missing package)."""
    code = (f"import runpy, sys\n"
            f"for name in {list(modules)!r}:\n"
            f"    sys.modules[name] = None\n"
            f"sys.argv = [{str(script)!r}, *{list(args)!r}]\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_extras_table_matches_pyproject():
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("needs the source tree's pyproject.toml")
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for extra, modules in _extras.EXTRAS.items():
        names = [requirement.split(";")[0].split("[")[0] for requirement in extras[extra]]
        names = [name.split(">")[0].split("<")[0].split("=")[0].split("!")[0].strip() for name in names]
        assert sorted(modules) == sorted(MODULE_OF.get(n, n).replace("-", "_") for n in names), extra


def test_missing_message_names_the_extra_and_the_modules():
    saved = dict(sys.modules)
    try:
        sys.modules["peft"] = None
        assert _extras.missing("train") == ["peft"]
        assert _extras.missing_message("train", "examples/train_dpo.py") == (
            'examples/train_dpo.py needs the train extra (missing: peft): pip install "vgpa[train]"')
        with pytest.raises(SystemExit, match=r"needs the train extra \(missing: peft\)"):
            _extras.require("train", "examples/train_dpo.py")
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


def test_train_dpo_help_works_without_the_train_extra_and_a_run_says_what_to_install(tmp_path):
    help_run = _without(_extras.EXTRAS["train"], EXAMPLES / "train_dpo.py", "--help")
    assert help_run.returncode == 0, help_run.stderr
    assert "--pretrained-model-name-or-path" in help_run.stdout and "--lora-target-modules" in help_run.stdout
    run = _without(["diffusers"], EXAMPLES / "train_dpo.py", "--tiny", "--output-dir", str(tmp_path / "run"))
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        'examples/train_dpo.py needs the train extra (missing: diffusers): pip install "vgpa[train]"')
    assert not (tmp_path / "run").exists()


def test_vgpa_training_without_the_extra_keeps_the_recipe_and_names_the_install():
    code = ("import sys\n"
            "sys.modules['diffusers'] = None\n"
            "import vgpa.training as vt\n"
            "assert vt.LORA_RANK == 64 and vt.select_videogpa_pair([]) is None\n"
            "try:\n"
            "    vt.diffusion_dpo_step\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ('vgpa.training.diffusion_dpo_step: vgpa.training needs the train extra '
                                  '(missing: diffusers): pip install "vgpa[train]"')


def test_score_demo_scores_without_the_train_extra_and_needs_it_to_train(tmp_path):
    help_run = _without(["cv2", *_extras.EXTRAS["train"]], EXAMPLES / "score_demo.py", "--help")
    assert help_run.returncode == 0 and "--steps" in help_run.stdout, help_run.stderr
    no_video = _without(["cv2"], EXAMPLES / "score_demo.py", "--out", str(tmp_path / "a"))
    assert no_video.stderr.strip().splitlines()[-1] == (
        'examples/score_demo.py needs the video extra (missing: cv2): pip install "vgpa[video]"')
    no_train = _without(["peft"], EXAMPLES / "score_demo.py", "--out", str(tmp_path / "b"))
    assert "needs the train extra (missing: peft)" in no_train.stderr
    assert not (tmp_path / "b").exists()
    scores_only = _without(_extras.EXTRAS["train"], EXAMPLES / "score_demo.py", "--out", str(tmp_path / "c"),
                           "--steps", "0", "--groups", "1", "--frames", "4", "--size", "32")
    assert "rigid videos win every group:" in scores_only.stdout, scores_only.stderr
    assert (tmp_path / "c" / "data" / "meta_data.json").exists()
