"""Tests that need PyAV, mtcnn or insightface skip with a reason where one is missing, rather than error.

Simulated: pytest runs a few of them in a subprocess whose sitecustomize hides the module (imports fail and
importlib.util.find_spec answers None, as on a machine without it, e.g. the lent GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HIDER = '''
import importlib.abc, importlib.util, os, sys
_HIDDEN = set(filter(None, os.environ.get("HIDE_MODULES", "").split(",")))
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in _HIDDEN else _find_spec(name, package)
importlib.util.find_spec = find_spec
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
sys.meta_path.insert(0, _Hide())
'''


def pytest_with_hidden(tmp_path: Path, hidden: str, *tests: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(HIDER)
    env = {**os.environ, "HIDE_MODULES": hidden,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("hidden, tests, reason", [
    ("av", ["tests/test_writers.py", "tests/test_sources.py",
            "tests/test_trt.py::test_python_entry_points_refuse_without_tensorrt"], "PyAV is not installed"),
    ("mtcnn", ["tests/test_detectors_mtcnn.py",
               "tests/test_int8_trt.py::test_ort_int8_keeps_u8s8_with_zero_points"], "mtcnn package is not installed"),
    ("insightface", ["tests/test_demo.py", "tests/test_checkpoint_errors.py",
                     "tests/test_int8_trt.py::test_ort_int8_keeps_u8s8_with_zero_points"], "insightface is not installed"),
], ids=["av", "mtcnn", "insightface"])
def test_tests_needing_a_missing_part_skip_with_its_reason(tmp_path, hidden, tests, reason):
    result = pytest_with_hidden(tmp_path, hidden, *tests)
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail + result.stderr[-2000:]
    assert "error" not in tail.splitlines()[-1] and "failed" not in tail.splitlines()[-1], tail
    skips = [line for line in tail.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) >= 2 and all(reason in line for line in skips), tail
