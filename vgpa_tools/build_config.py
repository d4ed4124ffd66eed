"""vgpa/_build_config.py for the tools, loaded by path as setup.py loads it: the checks read the
exact flags and arch rules of the build without importing torch or the vgpa package."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("vgpa_build_config", REPO / "vgpa" / "_build_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _load()
