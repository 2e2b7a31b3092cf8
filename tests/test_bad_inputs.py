"""The bad-input matrix: every odd or hostile input through the console entry point's function (`emoengine run`,
in this process: conftest's `cli_in_process`), and two refusals through a real `python -m emoengine run`.

Each refused case: the stated exit status, exactly one line on stderr (`emoengine: error: ...`), no traceback,
and nothing at all in the output folder (no final name, no leftover temporary). Each accepted odd input
(grey, RGBA, 16-bit, 4K): exit 0 and complete outputs. A video with damaged later frames: its good frames are
processed and written, summary.json counts the bad ones, and the exit status is 2 with one line saying so.

Cases covered elsewhere through the same entry point, not repeated here: text named .mp4 and an mp4 cut in
half (test_pipeline), every bad checkpoint incl. code-carrying pickles (test_checkpoint_errors), an ONNX file
with foreign inputs and --out naming a file (test_pipeline_control), SIGINT/SIGTERM and a failing stage
(test_pipeline), read-only and full output folders (test_faults).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from emoengine.engine.run.demo import shipped_photo, single_face_frames, write_clip
from emoengine.export.emonet import EmoNet

CLIP_FRAMES = 24


def emoengine(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emoengine", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "EMOENGINE_MODELS": str(cwd / "models")})


def cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def onnx_file(path: Path, input_type, input_shape, outputs: dict[str, list]) -> Path:
    """A tiny graph: `image` → Cast/Reshape-free constant outputs with the given names and shapes."""
    image = helper.make_tensor_value_info("image", input_type, input_shape)
    nodes, infos = [], []
    for name, shape in outputs.items():
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_v", TensorProto.FLOAT, [1] * len(shape), [0.0])))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    model = helper.make_model(helper.make_graph(nodes, "foreign", [image], infos),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def write_png16(path: Path, rgb8: np.ndarray, grey: bool = False) -> Path:
    img = rgb8.astype(np.uint16) * 257                     # 8-bit v → 16-bit v·257 (v back after >> 8)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if grey else cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)
    return path


def moving_pattern(n: int, w: int = 192, h: int = 144) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return [np.stack([127 + 100 * np.sin((xx + 3 * i) / 17), 127 + 100 * np.cos((yy - 2 * i) / 13),
                      (xx + yy + 5 * i) % 256], -1).astype(np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def media(tmp_path_factory, golden_pth_8) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_inputs")
    face = shipped_photo("Tom_Hanks_54745.png")
    frames = list(single_face_frames(CLIP_FRAMES, size=(192, 144), face_px=(60, 70)))
    m: dict[str, Path] = {"weights": golden_pth_8, "face_png": d / "face.png"}
    cv2.imwrite(str(m["face_png"]), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    (d / "empty.mp4").write_bytes(b"")
    m["empty_mp4"] = d / "empty.mp4"
    m["truncated_mkv"] = cut_in_half(write_clip(d / "clip.mkv", iter(frames), fps=24), d / "cut.mkv")
    m["truncated_avi"] = cut_in_half(write_clip(d / "clip.avi", iter(frames), fps=24), d / "cut.avi")
    (d / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    m["noise_mkv"] = d / "noise.mkv"
    (d / "notes.png").write_text("not an image\n")
    m["text_png"] = d / "notes.png"
    (d / "no_images").mkdir()
    (d / "no_images" / "readme.txt").write_text("nothing to see")
    m["empty_folder"] = d / "no_images"
    m["foreign_outputs_onnx"] = onnx_file(d / "foreign.onnx", TensorProto.UINT8, ["N", 256, 256, 3],
                                          {"logits": ["N", 1000]})
    m["float_input_onnx"] = onnx_file(d / "float_in.onnx", TensorProto.FLOAT, ["N", 3, 256, 256],
                                      {"expression": ["N", 8], "valence": ["N"], "arousal": ["N"],
                                       "heatmap": ["N", 68, 64, 64]})
    (d / "garbage.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
    m["garbage_onnx"] = d / "garbage.onnx"
    torch.manual_seed(0)
    torch.save(EmoNet(8), d / "whole_module.pth")        # a pickled nn.Module: the right net, the wrong class
    m["whole_module_pth"] = d / "whole_module.pth"
    # accepted odd inputs
    grey = cv2.cvtColor(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    cv2.imwrite(str(d / "grey8.png"), grey[:, :, 0])
    m["grey8_png"] = d / "grey8.png"
    m["grey16_png"] = write_png16(d / "grey16.png", grey, grey=True)
    m["rgb16_png"] = write_png16(d / "rgb16.png", face)
    rgba = np.dstack([cv2.cvtColor(face, cv2.COLOR_RGB2BGR), np.full(face.shape[:2], 200, np.uint8)])
    cv2.imwrite(str(d / "rgba.png"), rgba)
    m["rgba_png"] = d / "rgba.png"
    big = np.full((2160, 3840, 3), 70, np.uint8)
    big[600:600 + 900, 1500:1500 + 900] = cv2.resize(face, (900, 900), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(d / "uhd.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    m["uhd_jpg"] = d / "uhd.jpg"
    # damaged later frames: an mp4 whose packet 12 has a NAL length far past its end
    clip = write_clip(d / "clip.mp4", iter(moving_pattern(CLIP_FRAMES)), fps=24)   # no faces: no inference
    with av.open(str(clip)) as c:
        positions = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(clip.read_bytes())
    data[positions[12]:positions[12] + 4] = b"\xff\xff\xff\xff"
    (d / "damaged.mp4").write_bytes(bytes(data))
    m["damaged_mp4"] = d / "damaged.mp4"
    return m


W = ["--weights", "{weights}", "--backend", "torch"]
# id: (input, extra args, exit status, text the one error line must contain)
REFUSED = {
    "missing_input": ("{missing}", W, 2, "no such file or folder"),
    "empty_file": ("{empty_mp4}", W, 2, "not a readable video"),
    "truncated_mkv": ("{truncated_mkv}", W, 2, "truncated video"),
    "truncated_avi": ("{truncated_avi}", W, 2, "truncated video"),
    "noise_named_mkv": ("{noise_mkv}", W, 2, "not a readable video"),
    "text_named_png": ("{text_png}", W, 2, "not a readable image"),
    "folder_without_images": ("{empty_folder}", W, 2, "no images in folder"),
    "unsupported_url": ("gopher://example.org/clip", W, 2, "unsupported stream URL scheme"),
    "missing_camera": ("63", W, 2, "cannot open camera 63"),
    "unknown_backend": ("{face_png}", ["--weights", "{weights}", "--backend", "tpu"], 2, "unknown backend 'tpu'"),
    "unknown_detector": ("{face_png}", [*W, "--detector", "yolo"], 2, "--detector must be mtcnn, scrfd or none, not yolo"),
    "bad_crop_mode": ("{face_png}", [*W, "--crop", "tight"], 2, "--crop must be"),
    "zero_max_batch": ("{face_png}", [*W, "--max-batch", "0"], 2, "max-batch"),
    "onnx_without_contract_outputs": ("{face_png}", ["--model", "{foreign_outputs_onnx}"], 2,
                                      "lack expression, valence, arousal, heatmap"),
    "onnx_with_float_input": ("{face_png}", ["--model", "{float_input_onnx}"], 2, "expected uint8"),
    "garbage_onnx": ("{face_png}", ["--model", "{garbage_onnx}"], 2, "not an ONNX model"),
    "pickled_module_checkpoint": ("{face_png}", ["--weights", "{whole_module_pth}", "--backend", "torch"], 2,
                                  "refused as unsafe: it would import"),
}


class MakesMarker:
    """Unpickling this with a normal unpickler creates the folder `marker`: code, not weights."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def hostile_mtcnn_folder(tmp_path_factory) -> tuple[Path, Path]:
    """--detector-model folder whose pnet.lz4 (joblib = pickle) would create a marker folder when loaded."""
    import shutil

    import joblib

    from emoengine.engine.tracking.detectors.mtcnn_graphs import default_weights_dir

    d = tmp_path_factory.mktemp("hostile_mtcnn")
    for name in ("rnet", "onet"):
        shutil.copy(default_weights_dir() / f"{name}.lz4", d)
    joblib.dump([np.zeros(3, np.float32), MakesMarker(d / "MARKER")], d / "pnet.lz4", compress="lz4")
    return d, d / "MARKER"


def test_hostile_detector_weights_run_nothing_and_exit_2(hostile_mtcnn_folder, media, tmp_path, cli_in_process):
    import joblib

    folder, marker = hostile_mtcnn_folder
    out = tmp_path / "out"
    r = cli_in_process("run", str(media["face_png"]), "--weights", str(media["weights"]), "--backend", "torch",
                       "--detector-model", str(folder), "--out", str(out), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "refused as unsafe: it would import" in lines[0] and "mkdir" in lines[0], lines[0]
    assert not marker.exists() and not out.exists()
    joblib.load(folder / "pnet.lz4")            # the payload is real: a plain load does run it
    assert marker.is_dir()


def fill(value: str, media: dict[str, Path], tmp_path: Path) -> str:
    return value.format(missing=tmp_path / "nope.mp4", **{k: str(v) for k, v in media.items()})


def refused(case: str, media, tmp_path: Path, cli) -> None:
    source, extra, code, expected = REFUSED[case]
    out = tmp_path / "out"
    r = cli("run", fill(source, media, tmp_path), *(fill(a, media, tmp_path) for a in extra),
            "--out", str(out), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("emoengine: error: "), r.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_input_one_line_exit_code_nothing_written(case, media, tmp_path, cli_in_process):
    refused(case, media, tmp_path, cli_in_process)


@pytest.mark.parametrize("case", ["garbage_onnx", "missing_input"])
def test_refused_input_from_a_real_process(case, media, tmp_path):
    """The same refusals through `python -m emoengine`: the real process's exit status and its stderr."""
    refused(case, media, tmp_path, emoengine)


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


ODD_ENCODINGS = ("face_png", "grey8_png", "grey16_png", "rgb16_png", "rgba_png")   # one folder, in this order


def test_grey_rgba_and_16bit_images_run_and_match_the_8bit_photo(media, tmp_path, cli_in_process):
    """The same photo as 8-bit RGB, grey 8/16-bit, RGB 16-bit and RGBA: all run; RGB16 and RGBA hold the same
    pixels as the 8-bit photo once converted, so they predict the same numbers; the greys predict valid ones."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for i, key in enumerate(ODD_ENCODINGS):
        (folder / f"{i}_{media[key].name}").write_bytes(media[key].read_bytes())
    out = tmp_path / "out"
    r = cli_in_process("run", str(folder), "--weights", str(media["weights"]), "--backend", "torch",
                       "--detector", "none", "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    header, rows = read_rows(out / "predictions.csv")
    assert header[:3] == ["frame", "time_s", "face_id"] and [int(x["frame"]) for x in rows] == [0, 1, 2, 3, 4]
    probs = np.array([[float(x[k]) for k in header if k.startswith("p_")] for x in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(probs[3], probs[0], atol=1e-4)   # RGB 16-bit
    np.testing.assert_allclose(probs[4], probs[0], atol=1e-4)   # RGBA
    np.testing.assert_allclose(probs[2], probs[1], atol=1e-4)   # grey 16-bit = grey 8-bit
    assert len(list((out / "annotated").iterdir())) == 5


def test_uhd_frame_runs_with_the_face_where_it_is(media, tmp_path, cli_in_process):
    out = tmp_path / "out"
    r = cli_in_process("run", str(media["uhd_jpg"]), "--weights", str(media["weights"]), "--backend", "torch",
                       "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    _, rows = read_rows(out / "predictions.csv")
    assert len(rows) == 1
    x1, y1, x2, y2 = (float(rows[0][k]) for k in ("x1", "y1", "x2", "y2"))
    assert 1500 < (x1 + x2) / 2 < 2400 and 600 < (y1 + y2) / 2 < 1500, rows[0]
    assert cv2.imread(str(out / "annotated.png")).shape == (2160, 3840, 3)


def test_damaged_later_frames_keep_the_good_ones_and_exit_2(media, tmp_path, cli_in_process):
    """Policy: the good frames are processed and written in full (outputs complete for them, summary.json
    last, listing the damage); the one error line says how many frames were lost; exit 2 (bad input), so an
    unattended pipeline notices."""
    out = tmp_path / "out"
    r = cli_in_process("run", str(media["damaged_mp4"]), "--weights", str(media["weights"]), "--backend",
                       "torch", "--out", str(out), "-q", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("emoengine: error: damaged video: ") and "could not be decoded" in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_frames"] >= 1 and summary["frames"] + summary["bad_frames"] == CLIP_FRAMES
    assert summary["frames"] >= CLIP_FRAMES // 2
    assert 3 <= summary["decode_errors"][0]["after_frame"] <= 12
    header, rows = read_rows(out / "predictions.csv")
    assert header[:3] == ["frame", "time_s", "face_id"] and rows == []   # a pattern, no faces
    for video in ("annotated.mp4", "conv1.mp4", "emo_conv1.mp4"):
        with av.open(str(out / video)) as c:
            assert sum(1 for _ in c.decode(video=0)) == summary["frames"], video
    assert sorted(summary["files"]) == sorted(p.name for p in out.iterdir())
