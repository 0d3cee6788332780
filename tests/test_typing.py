"""The public API is typed (py.typed shipped) and passes mypy (config in pyproject.toml)."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

import softcheck

ROOT = pathlib.Path(softcheck.__file__).parent
PUBLIC = ["__init__.py", "api.py", "testing/__init__.py", "testing/plugin.py",
          "engine/results.py"]


def test_py_typed_is_shipped():
    assert (ROOT / "py.typed").exists()


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is in the 'test' extra")
@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_public_api_passes_mypy():
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental",
                        *[str(ROOT / p) for p in PUBLIC]],
                       capture_output=True, text=True, cwd=ROOT.parent)
    assert r.returncode == 0, r.stdout + r.stderr
