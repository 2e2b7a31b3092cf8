"""Where `../shared` is (the golden data and the demo clip that sit beside the repository, never in it).

A benchmark runs from the checkout (`python -m emoengine.benchmarks.…` in its root) while the package it imports
may be installed elsewhere (CI's venv), so the folder is looked for beside the working directory first, then
beside this file's repository (an uninstalled run from another directory). `EMOENGINE_GOLDEN` still overrides
the golden folder where a benchmark reads it.
"""

from __future__ import annotations

from pathlib import Path


def shared_path(*parts: str) -> Path:
    """`../shared/<parts>` of the first candidate root that exists (the working directory's first)."""
    roots = [Path.cwd() / ".." / "shared", Path(__file__).resolve().parents[1] / ".." / "shared"]
    root = next((r for r in roots if r.is_dir()), roots[0])
    return root.resolve().joinpath(*parts)
