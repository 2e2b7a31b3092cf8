"""The Python API in a real Jupyter kernel (nbclient + ipykernel): the README's `Engine` example run as written,
a `no_video=True` analysis displayed as Jupyter displays it (its `_repr_html_`: the table and the mean maps drawn
from the taps, since such a run writes no PNG), `stream` on a file, and a tap array's shape.

The kernel is the Python running these tests, registered in a temporary Jupyter path (nothing installed, no
network). The README block is read from README.md, so the example a newcomer copies is the one that runs."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (the `test` extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (the `test` extra)")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (the `test` extra)")
pytest.importorskip("pandas", reason="Analysis.predictions is a pandas DataFrame")

REPO = Path(__file__).resolve().parents[1]
KERNEL = "emoengine-test"
FRAMES = 4


def readme_engine_example() -> str:
    """The first ```python block of README.md (the ten-line Engine example)."""
    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no ```python block"
    return block.group(1)


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch) -> Path:
    """A kernelspec for this Python in a temporary JUPYTER_PATH; Jupyter's and IPython's own state kept there."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "emoengine tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter" / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return tmp_path


@pytest.fixture
def workdir(jupyter_env, golden_pth_8, requires) -> Path:
    """The folder the README example assumes: models/emonet_8.pth and clip.mp4 (a face in every frame)."""
    requires("av", "cv2", "mtcnn", "insightface")
    from emoengine.engine.run.demo import single_face_frames, write_clip

    work = jupyter_env / "work"
    (work / "models").mkdir(parents=True)
    shutil.copy(golden_pth_8, work / "models" / "emonet_8.pth")
    write_clip(work / "clip.mp4", single_face_frames(FRAMES, size=(200, 160), face_px=(100, 120)))
    return work


def cell_outputs(cell) -> tuple[str, list[dict]]:
    """A cell's stream text (stdout and stderr) and its rich outputs' data."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return text, [o["data"] for o in cell.outputs if o.output_type in ("display_data", "execute_result")]


def test_a_no_video_analysis_draws_its_mean_maps(tmp_path):
    """What the notebook shows without a kernel (fast): a --no-video run leaves no mean PNG, so the display draws
    each map tap's mean from the arrays; a vector tap has no picture; frames without a face do not count."""
    import numpy as np

    from emoengine.api_results import Analysis

    (tmp_path / "predictions.csv").write_text("frame,face_id,valence\n0,0,0.5\n")
    conv1 = np.full((3, 128, 128), np.nan, np.float32)
    conv1[0], conv1[2] = 1.0, np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128)
    taps = [{"name": "conv1", "mean": None}, {"name": "emo_fc_2.1", "mean": None}]
    analysis = Analysis(tmp_path, {"taps": taps, "files": ["predictions.csv"]},
                        {"conv1": conv1, "emo_fc_2.1": np.zeros((3, 128), np.float32)}, ["conv1", "emo_fc_2.1"])
    pngs = analysis.mean_pngs()
    assert list(pngs) == ["conv1"] and pngs["conv1"].startswith(b"\x89PNG")
    import cv2

    image = cv2.imdecode(np.frombuffer(pngs["conv1"], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (256, 256, 3) and image.std() > 0   # the mean of frames 0 and 2: not flat, not black
    page = analysis._repr_html_()
    assert "<table" in page and page.count("data:image/png;base64,") == 1


@pytest.mark.slow   # over ~10 s on 2 cores (docs/development.md)
def test_readme_example_and_a_no_video_analysis_run_in_a_real_kernel(workdir, monkeypatch):
    monkeypatch.setenv("EMOENGINE_MODELS", str(workdir / "models"))
    cells = [
        readme_engine_example(),
        # a no_video run writes no mean PNG: the display draws the maps from the taps it kept
        "bare = emoengine.Engine(weights='models/emonet_8.pth', no_video=True)\n"
        "analysis = bare.analyze('clip.mp4')\n"
        "analysis",
        "frames = [(f.index, len(f.faces)) for f in bare.stream('clip.mp4')]\n"
        "print('stream', frames)\n"
        "print('shape', result.taps['emo_net_2.2.conv3'].shape, analysis.taps['conv1'].shape)\n"
        "bare.close()",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=600,
                            resources={"metadata": {"path": str(workdir)}}).execute()

    readme_text, _ = cell_outputs(notebook.cells[0])
    assert "valence" in readme_text and "(4, 32, 32)" in readme_text, readme_text   # groupby's table, the shape
    streamed = [line for line in readme_text.splitlines() if line.endswith("(128, 128)")]
    assert [line.split()[0] for line in streamed] == [str(i) for i in range(FRAMES)], readme_text
    assert (workdir / "clip-out" / "predictions.csv").is_file() and (workdir / "clip-out" / "conv1.mp4").is_file()

    errors, shown = cell_outputs(notebook.cells[1])
    assert "Traceback" not in errors and "Error" not in errors, errors   # IPython prints a failing _repr_html_
    (page,) = [data["text/html"] for data in shown if "text/html" in data]
    assert "<table" in page and "p_Neutral" in page
    assert page.count("data:image/png;base64,") == 2, page[:500]   # conv1 and emo_net_2.0.conv1, drawn

    text, _ = cell_outputs(notebook.cells[2])
    assert f"stream {[(i, 1) for i in range(FRAMES)]}" in text, text
    assert "shape (4, 32, 32) (4, 128, 128)" in text, text
