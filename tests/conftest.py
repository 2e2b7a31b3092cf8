"""Shared fixtures: the golden EmoNet data, upstream-format .pth files made from it, and ONNX files exported once
per session (an EmoNet export + verification takes a few seconds on CPU, so tests share them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def emoengine_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point (`python -m emoengine ...`) with models/ redirected into `cwd`."""
    env = {**os.environ, "EMOENGINE_MODELS": str(cwd / "models")}
    return subprocess.run([sys.executable, "-m", "emoengine", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_upstream_pth(weights_npz: Path, out: Path) -> Path:
    """A golden weight set in the upstream file format: plain state dict, `module.` keys, float32 (golden README)."""
    import torch

    w = np.load(weights_npz)
    state = {"module." + k: torch.from_numpy(w[k]).float() if w[k].dtype == np.float16 else torch.from_numpy(w[k])
             for k in w.files}
    torch.save(state, out)
    return out


@pytest.fixture(scope="session")
def cli():
    """`cli(*args, cwd=...)`: run `python -m emoengine` (see `emoengine_cli`)."""
    return emoengine_cli


GOLDEN = Path(os.environ.get("EMOENGINE_GOLDEN") or REPO / ".." / "shared" / "golden").resolve()
HAVE_GOLDEN = (GOLDEN / "emonet8.weights.npz").is_file()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not HAVE_GOLDEN:
        pytest.skip(f"golden EmoNet data not found at {GOLDEN} (set EMOENGINE_GOLDEN to its folder)")
    return GOLDEN


def upstream_format_pth(num_classes: int, out: Path) -> Path:
    """The golden weights where ../shared/golden exists; otherwise a seeded untrained EmoNet saved the same way
    (upstream file format, `module.` keys), so tests of structure, metadata and plumbing run without it.
    Tests that compare numbers ask for `golden_outputs`, which skips without the golden data."""
    if HAVE_GOLDEN:
        return write_upstream_pth(GOLDEN / f"emonet{num_classes}.weights.npz", out)
    import torch

    from emoengine.export.emonet import EmoNet

    torch.manual_seed(num_classes)
    torch.save({"module." + k: v for k, v in EmoNet(num_classes).state_dict().items()}, out)
    return out


@pytest.fixture(scope="session")
def golden_pth_8(tmp_path_factory) -> Path:
    return upstream_format_pth(8, tmp_path_factory.mktemp("pth") / "emonet_8.pth")


@pytest.fixture(scope="session")
def golden_pth_5(tmp_path_factory) -> Path:
    return upstream_format_pth(5, tmp_path_factory.mktemp("pth") / "emonet_5.pth")


@pytest.fixture(scope="session")
def golden_outputs(golden_dir):
    """`golden_outputs(C)` -> the golden outputs npz of the C-class model, as a dict of arrays."""
    cache: dict[int, dict[str, np.ndarray]] = {}

    def get(num_classes: int) -> dict[str, np.ndarray]:
        if num_classes not in cache:
            with np.load(golden_dir / f"emonet{num_classes}.outputs.npz") as z:
                cache[num_classes] = {k: z[k] for k in z.files}
        return cache[num_classes]

    return get


@pytest.fixture(scope="session")
def onnx_full_8(golden_pth_8, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The 8-class golden model exported with --full-taps through the real CLI, and that run's result."""
    workdir = tmp_path_factory.mktemp("export8")
    out = workdir / "emonet8_full.onnx"
    result = emoengine_cli("export", "--weights", str(golden_pth_8), "--full-taps", "--output", str(out),
                           cwd=workdir)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def onnx_plain_5(golden_pth_5, tmp_path_factory):
    """The 5-class golden model exported (no full taps) by the API to its default path, verified on golden crops
    (synthetic crops where the golden data is absent)."""
    from emoengine.export.checkpoint import load_emonet
    from emoengine.export.onnx_export import export_onnx

    models = tmp_path_factory.mktemp("export5") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOENGINE_MODELS", str(models))
        from emoengine.export.emonet import synthetic_crops

        images = synthetic_crops(n=2)
        if HAVE_GOLDEN:
            with np.load(GOLDEN / "emonet5.outputs.npz") as z:
                images = z["images_rgb"][:2]
        report = export_onnx(load_emonet(golden_pth_5), verify_images=images)
    return report


@pytest.fixture(scope="session")
def page_links():
    """`page_links(html)`: every `src` and `href` of a page, as written (report.html, index.html)."""
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag, attrs) -> None:
            self.found += [v for k, v in attrs if k in ("src", "href") and v is not None]

    def links(page: str) -> list[str]:
        parser = Links()
        parser.feed(page)
        return parser.found

    return links
