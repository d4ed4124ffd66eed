"""pytest plugin of the test run against an installed wheel (.ci/run loads it with
``-p installed_wheel`` in a copy of tests/ outside the source tree).

The suite runs unchanged against vgpa as pip installed it. The only tests that cannot run there
are those that need the source tree's vgpa_tools/ package (the GPU-proof compile checks, the wheel
inspection): importing ``vgpa_tools`` skips their module, with the reason shown. The run also stops
at once if vgpa is imported from a source tree rather than from site-packages.
"""

import importlib.abc
import os
import sys

import pytest

NO_SOURCE_TREE = ("needs the source tree ({name}: the GPU-proof compile checks and the wheel tooling); "
                  "this run tests the installed wheel from a copy of tests/")


class _SourceTreeOnly(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: an import of vgpa_tools or vgpa_tools.* skips the importing test module."""

    def find_spec(self, name, path=None, target=None):
        if name == "vgpa_tools" or name.startswith("vgpa_tools."):
            raise pytest.skip.Exception(NO_SOURCE_TREE.format(name=name), allow_module_level=True)
        return None


def pytest_configure(config):
    sys.meta_path.insert(0, _SourceTreeOnly())
    import vgpa

    location = os.path.dirname(os.path.abspath(vgpa.__file__))
    if "site-packages" not in location.split(os.sep) or os.path.exists(os.path.join(location, "..", "setup.py")):
        raise pytest.UsageError(f"installed-wheel run: vgpa is imported from {location}, not from an installed wheel")
