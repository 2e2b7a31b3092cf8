"""Shared fixtures: the golden EmoNet data, upstream-format .pth files made from it, and ONNX files exported once
per session (an EmoNet export + verification takes a few seconds on CPU, so tests share them): the golden 8-class
model with full taps and with the 13 golden layers tapped, the golden 5-class plain model, and random weights with
full taps."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# -- optional parts: a test that needs one skips, with the reason, where it is missing ------------------------------
OPTIONAL_PARTS = {
    "av": "PyAV is not installed (video decoding and encoding: pip install av)",
    "mtcnn": "the mtcnn package is not installed (the MTCNN detector's weights ship in it: pip install mtcnn)",
    "insightface": "insightface is not installed (the test photos t1.jpg and Tom_Hanks_54745.png ship in it)",
    "cv2": "OpenCV is not installed (pip install opencv-python)",
}
# test modules that use a part throughout (videos, the default MTCNN detector, the shipped photos, the face crops
# export.face_crops cuts from those photos with MTCNN): the whole module skips where one is missing
NEEDS = {
    "test_bad_inputs.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_batch.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_batch_inputs.py": ("av", "cv2", "mtcnn"),
    "test_bench.py": ("mtcnn", "insightface"),
    "test_checkpoint_errors.py": ("insightface",),
    "test_demo.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_detectors_mtcnn.py": ("cv2", "mtcnn", "insightface"),
    "test_detectors_scrfd.py": ("cv2", "insightface"),
    "test_faults.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_keyframes.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_long_run.py": ("av",),
    "test_pipeline.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_pipeline_control.py": ("av", "mtcnn", "insightface"),
    "test_report_browser.py": ("av",),
    "test_resume.py": ("av", "cv2", "mtcnn", "insightface"),
    "test_sources.py": ("av", "cv2"),
    "test_tracker.py": ("av",),
    "test_writers.py": ("av", "cv2"),
}


def lacking(*modules: str) -> str | None:
    """Why a test needing these optional modules cannot run here (the first missing one's reason), or None."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return OPTIONAL_PARTS.get(missing[0], f"{missing[0]} is not installed") if missing else None


@pytest.fixture(scope="session")
def requires():
    """`requires("av", "mtcnn")` in a test or fixture: skip it with the reason where one is not installed."""

    def check(*modules: str) -> None:
        why = lacking(*modules)
        if why:
            pytest.skip(why)

    return check


class SkippedModule(pytest.Module):
    """A test module whose optional part is missing: reported as skipped with the reason, never imported."""

    reason = ""

    def collect(self):
        pytest.skip(self.reason, allow_module_level=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    why = lacking(*NEEDS.get(module_path.name, ()))
    if why:
        module = SkippedModule.from_parent(parent, path=module_path)
        module.reason = why
        return module
    return None


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
    """`cli(*args, cwd=...)`: run `python -m emoengine` in a child process (see `emoengine_cli`): for tests whose
    point is the process boundary (signals, a real process's exit status and output, peak RSS)."""
    return emoengine_cli


@pytest.fixture
def cli_in_process(capfd, monkeypatch):
    """`cli_in_process(*args, cwd=...)`: the same command and the same result as `cli` (exit status, stdout,
    stderr, models/ in `cwd`), run by the console entry point's own function in this process: no interpreter,
    NumPy, ONNX Runtime or PyTorch start-up per call. Output is captured at the file descriptors, so what a
    native library prints counts as it would from a real process."""
    from emoengine.cli.main import main

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.setenv("EMOENGINE_MODELS", str(Path(cwd) / "models"))
        monkeypatch.chdir(cwd)
        capfd.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["emoengine", *args], code, out, err)

    return run


GOLDEN = Path(os.environ.get("EMOENGINE_GOLDEN") or REPO / ".." / "shared" / "golden").resolve()
HAVE_GOLDEN = (GOLDEN / "emonet8.weights.npz").is_file()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not HAVE_GOLDEN:
        pytest.skip(f"golden EmoNet data not found at {GOLDEN} (set EMOENGINE_GOLDEN to its folder)")
    return GOLDEN


def upstream_format_pth(num_classes: int, out: Path) -> Path:
    """The golden weights where ../shared/golden exists; otherwise seeded BatchNorm-calibrated weights saved the same way
    (upstream file format, `module.` keys), so tests of structure, metadata and plumbing run without it.
    Tests that compare numbers ask for `golden_outputs`, which skips without the golden data."""
    if HAVE_GOLDEN:
        return write_upstream_pth(GOLDEN / f"emonet{num_classes}.weights.npz", out)
    from emoengine.benchmarks.gpu_bench import save_upstream_format
    from emoengine.export.emonet import calibrated_emonet

    # BatchNorm-calibrated like the golden weights, so fp16/bf16 GPU tests judge with headroom (tests/test_device_check.py)
    return save_upstream_format(calibrated_emonet(num_classes).state_dict(), out)


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
def golden_crops_8() -> np.ndarray:
    """The golden 8-class crops where the golden data is, else 4 synthetic crops (for tests that compare two
    backends with each other, not with the golden outputs)."""
    if HAVE_GOLDEN:
        with np.load(GOLDEN / "emonet8.outputs.npz") as z:
            return z["images_rgb"]
    from emoengine.export.emonet import parity_crops

    return parity_crops()


@pytest.fixture(scope="session")
def onnx_full_8(golden_pth_8, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The 8-class golden model exported with --full-taps through the real CLI, and that run's result."""
    workdir = tmp_path_factory.mktemp("export8")
    out = workdir / "emonet8_full.onnx"
    result = emoengine_cli("export", "--weights", str(golden_pth_8), "--full-taps", "--output", str(out),
                           cwd=workdir)
    assert result.returncode == 0, result.stderr
    return out, result


def emoengine_here(*args: str) -> subprocess.CompletedProcess:
    """`emoengine ...` by the console entry point's function in this process, stdout and stderr captured at the
    Python level (`cli_in_process` captures at the file descriptors, but is per test): for session fixtures."""
    from emoengine.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess(["emoengine", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def random_onnx_full(tmp_path_factory) -> Path:
    """Random-weight 8-class EmoNet exported (and verified) once for the session through the CLI, with full taps
    (so --save-activations and the grid view work): a model for tests of what a run does, not of its numbers."""
    out = tmp_path_factory.mktemp("export_random") / "emonet8-random.onnx"
    result = emoengine_here("export", "--weights", "random", "--output", str(out), "--full-taps")
    assert result.returncode == 0, result.stderr
    return out


def golden_layers() -> tuple[str, ...]:
    """tests/test_taps.py's 13 golden layers, in the order its export asks for them."""
    spec = importlib.util.spec_from_file_location("_emoengine_conftest_taps", Path(__file__).with_name("test_taps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GOLDEN_LAYERS


@pytest.fixture(scope="session")
def onnx_taps13_8(golden_pth_8, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The golden 8-class model exported through the CLI with `--taps` naming the 13 golden layers (verified), and
    that command's result; alone in its folder."""
    out = tmp_path_factory.mktemp("export_taps") / "emonet8_taps.onnx"
    result = emoengine_here("export", "--weights", str(golden_pth_8), "--taps", ",".join(golden_layers()),
                            "--output", str(out))
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


def pytest_collection_modifyitems(items) -> None:
    """Tests built on tests/test_trt.py's `trt_env` (real TensorRT engines on a CUDA GPU) are `gpu` tests."""
    for item in items:
        if "trt_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
