"""The runner contract over real backends: PyTorch and ONNX Runtime (CPU) give the same EmoNet predictions on the
golden crops through `open_emonet`; EmoNetModel's post-processing (softmax, class names, landmarks from heatmaps);
backend choice by artifact suffix; the ONNX export cache under $EMOENGINE_MODELS; one-line refusals for backends
this machine lacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from emoengine import CLASS_NAMES_8
from emoengine.compare import compare
from emoengine.contract import CROP_SIZE
from emoengine.engine.backends import Runner, backend_for_artifact
from emoengine.engine.model.emonet_model import EmoNetModel, heatmap_landmarks, open_emonet, softmax
from emoengine.errors import UserInputError
from emoengine.export.emonet import output_names


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def golden8(golden_outputs):
    return golden_outputs(8)


@pytest.fixture(scope="module")
def torch8(golden_pth_8):
    model = open_emonet("torch", weights=str(golden_pth_8))
    yield model
    model.close()


@pytest.fixture(scope="module")
def ort8(golden_pth_8, tmp_path_factory):
    """ort opened from the golden checkpoint with $EMOENGINE_MODELS (and the working folder) redirected: the one
    ONNX export of this module, and what it left behind."""
    root = tmp_path_factory.mktemp("backends")
    models, cwd = root / "models-cache", root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOENGINE_MODELS", str(models))
        mp.chdir(cwd)
        model = open_emonet("ort", weights=str(golden_pth_8))
    onnx_files = sorted(models.glob("*.onnx"))
    ns = SimpleNamespace(model=model, models=models, cwd=cwd, files=tree(models), cwd_files=tree(cwd),
                         onnx=onnx_files[0] if onnx_files else None,
                         mtime=onnx_files[0].stat().st_mtime_ns if onnx_files else None)
    yield ns
    model.close()


@pytest.fixture(scope="module")
def predictions(torch8, ort8, golden8):
    crops = golden8["images_rgb"]
    return torch8.predict(crops), ort8.model.predict(crops)


# --- torch vs ort through open_emonet -------------------------------------------------------------------------


def test_backends_report_their_names_and_the_contract_outputs(torch8, ort8):
    assert torch8.backend == "torch" and ort8.model.backend == "ort"
    assert torch8.runner.output_names == ort8.model.runner.output_names == list(output_names(False))
    assert torch8.runner.input_names == ort8.model.runner.input_names == ["image"]
    assert torch8.has_taps and ort8.model.has_taps and not ort8.model.has_full_taps
    assert not torch8.is_random and not ort8.model.is_random


@pytest.mark.parametrize("field", ["logits", "probs", "valence", "arousal", "conv1_mean", "emo_conv1_mean"])
def test_torch_and_ort_predictions_agree_on_golden_crops(predictions, field):
    t, o = predictions
    assert len(t) == len(o) == 4
    def get(p):
        return p.taps[field] if field.endswith("_mean") else getattr(p, field)

    verdict = compare({field: get(o)}, {field: get(t)}, "fp32")
    assert verdict and list(verdict.outputs) == [field], verdict.table()


def test_torch_and_ort_landmarks_agree(predictions):
    t, o = predictions
    assert t.landmarks.shape == o.landmarks.shape == (4, 68, 2)
    # an arg-max can flip between two near-equal cells; one cell is 4 crop pixels
    close = np.abs(t.landmarks - o.landmarks).max(axis=-1) <= 1.0 + 1e-4
    assert close.mean() >= 0.97, f"{(~close).sum()} of {close.size} landmarks differ by more than 1 px"


def test_predictions_match_upstream_golden_outputs(predictions, golden8):
    t, o = predictions
    for p in (t, o):
        got = {"expression": p.logits, "valence": p.valence, "arousal": p.arousal, "conv1_mean": p.taps["conv1_mean"],
               "emo_conv1_mean": p.taps["emo_conv1_mean"]}
        verdict = compare(got, {name: golden8[name] for name in got}, "fp32")
        assert verdict and len(verdict.outputs) == len(got), verdict.table()


# --- EmoNetModel post-processing ------------------------------------------------------------------------------


def test_probs_are_softmax_of_logits_and_sum_to_one(predictions):
    for p in predictions:
        assert p.probs.dtype == np.float32 and p.probs.shape == (4, 8)
        np.testing.assert_allclose(p.probs.sum(axis=1), 1.0, atol=1e-6)
        z = p.logits.astype(np.float64)
        expected = np.exp(z - z.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(p.probs, expected, rtol=1e-5, atol=1e-7)
        assert (p.probs.argmax(1) == p.logits.argmax(1)).all()


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-7)


def test_class_names_come_from_the_artifacts_metadata(torch8, ort8):
    for model in (torch8, ort8.model):
        assert model.class_names == CLASS_NAMES_8
        assert json.loads(model.runner.metadata["class_names"]) == list(CLASS_NAMES_8)


class FakeRunner(Runner):
    """A runner that returns known outputs: post-processing under test, not a network."""

    backend = "fake"

    def __init__(self, metadata: dict[str, str], classes: int) -> None:
        self.input_names = ["image"]
        self.output_names = list(output_names(False))
        self.metadata = metadata
        self.classes = classes
        self.calls: list[int] = []

    def _infer(self, feeds):
        x = feeds["image"]
        n = len(x)
        self.calls.append(n)
        ids = x[:, 0, 0, 0].astype(np.float32)  # each crop carries its index in its first pixel
        logits = np.stack([ids * (c + 1) / 100 for c in range(self.classes)], axis=1)
        heat = np.zeros((n, 68, 64, 64), np.float32)
        heat[:, :, 20, 30] = 1.0
        return {"expression": logits, "valence": ids / 10, "arousal": -ids / 10, "heatmap": heat,
                "conv1_mean": np.zeros((n, 128, 128), np.float32),
                "emo_conv1_mean": np.zeros((n, 64, 64), np.float32)}


def test_emonet_model_uses_metadata_names_and_chunks_in_order():
    names = ["calm", "glad", "blue", "wow", "eek"]
    runner = FakeRunner({"class_names": json.dumps(names), "num_classes": "5"}, classes=5)
    model = EmoNetModel(runner, max_batch=2)
    crops = np.zeros((5, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(5)
    out = model.predict(crops)
    assert model.class_names == tuple(names)
    assert runner.calls == [2, 2, 1]
    np.testing.assert_allclose(out.valence, np.arange(5) / 10)
    np.testing.assert_allclose(out.logits[:, 4], np.arange(5) * 5 / 100, rtol=1e-6)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out.landmarks[:, :, 0], 30.5 * 4)  # cell x=30 -> crop pixel (30 + 0.5) * 4
    np.testing.assert_allclose(out.landmarks[:, :, 1], 20.5 * 4)
    assert "conv1" not in out.taps and "emo_conv1" not in out.taps and list(out.taps) == ["conv1_mean",
                                                                                          "emo_conv1_mean"]


def test_emonet_model_without_names_falls_back_to_upstream_names_and_handles_no_crops():
    model = EmoNetModel(FakeRunner({"num_classes": "5"}, classes=5))
    assert model.class_names == CLASS_NAMES_8[:5]
    empty = model.predict(np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8))
    assert len(empty) == 0 and empty.probs.shape == (0, 5) and empty.landmarks.shape == (0, 68, 2)
    with pytest.raises(ValueError):
        model.predict(np.zeros((1, 128, 128, 3), np.uint8))
    with pytest.raises(ValueError):
        model.predict(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.float32))


def gaussian_heatmaps(peaks: list[tuple[float, float]], size: int = 64, sigma: float = 1.0) -> np.ndarray:
    """(1, K, size, size) heatmaps, one Gaussian per (x, y) peak, in heatmap cells."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    maps = [np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in peaks]
    return np.stack(maps)[None].astype(np.float32)


@pytest.mark.parametrize("x, y", [(10, 40), (40, 10), (31, 31), (0, 0), (63, 63), (0, 63), (63, 5)])
def test_heatmap_peak_maps_to_crop_pixel_centre(x, y):
    pts = heatmap_landmarks(gaussian_heatmaps([(x, y)]))
    assert pts.shape == (1, 1, 2)
    px, py = pts[0, 0]
    # (x, y) order, not (row, col)
    assert abs(px - (x + 0.5) * 4) <= 1.0 and abs(py - (y + 0.5) * 4) <= 1.0, (px, py)
    assert 0 <= px < CROP_SIZE and 0 <= py < CROP_SIZE


def test_heatmap_quarter_cell_shift_toward_the_higher_neighbour():
    # true peak between cells 20 and 21 (nearer 20) in x, exactly on cell 44 in y
    pts = heatmap_landmarks(gaussian_heatmaps([(20.3, 44.0)]))
    np.testing.assert_allclose(pts[0, 0], [(20 + 0.25 + 0.5) * 4, (44 + 0.5) * 4], atol=1e-5)
    pts = heatmap_landmarks(gaussian_heatmaps([(20.0, 43.7)]))
    np.testing.assert_allclose(pts[0, 0], [(20 + 0.5) * 4, (44 - 0.25 + 0.5) * 4], atol=1e-5)


def test_heatmap_landmarks_scale_with_crop_size_and_handle_many_points():
    peaks = [(float(i % 60 + 2), float(i // 2 + 1)) for i in range(68)]
    hm = np.concatenate([gaussian_heatmaps(peaks), gaussian_heatmaps(peaks[::-1])])
    pts = heatmap_landmarks(hm, crop_size=512)
    assert pts.shape == (2, 68, 2)
    np.testing.assert_allclose(pts[0], (np.array(peaks) + 0.5) * 8, atol=1e-5)
    np.testing.assert_allclose(pts[1], (np.array(peaks[::-1]) + 0.5) * 8, atol=1e-5)


def test_golden_heatmaps_give_68_points_inside_the_crop(golden8, predictions):
    pts = heatmap_landmarks(golden8["heatmap"])
    assert pts.shape == (4, 68, 2) and np.isfinite(pts).all()
    assert (pts >= 0).all() and (pts <= CROP_SIZE).all()
    for p in predictions:
        assert (p.landmarks >= 0).all() and (p.landmarks <= CROP_SIZE).all()


# --- picking a backend ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, backend", [("models/emonet8.onnx", "ort"), ("X.ONNX", "ort"), ("a/b.engine", "trt"),
                                           ("emonet_8.pth", "torch")])
def test_backend_for_artifact_by_suffix(path, backend):
    assert backend_for_artifact(path) == backend


@pytest.mark.parametrize("path", ["model.tflite", "model", "model.onnx.bak", "weights.pt"])
def test_backend_for_artifact_refuses_unknown_suffix(path):
    with pytest.raises(UserInputError) as e:
        backend_for_artifact(path)
    assert "\n" not in str(e.value) and path in str(e.value)


def test_open_emonet_refuses_unknown_backend_and_ambiguous_sources():
    with pytest.raises(UserInputError, match="unknown backend"):
        open_emonet("tpu", weights="random")
    with pytest.raises(UserInputError, match="exactly one"):
        open_emonet("ort", weights="random", model="x.onnx")
    with pytest.raises(UserInputError, match="exactly one"):
        open_emonet("ort")


# --- the ONNX export cache --------------------------------------------------------------------------------------


def test_weights_export_is_cached_only_under_emoengine_models(ort8, golden_pth_8):
    sha12 = hashlib.sha256(golden_pth_8.read_bytes()).hexdigest()[:12]
    assert ort8.files == [f"emonet8-{sha12}.onnx"]  # one self-contained file, no temp or .data leftovers
    assert ort8.cwd_files == []                      # nothing under ./models


def test_second_open_reuses_the_cached_export(ort8, golden_pth_8, monkeypatch):
    monkeypatch.setenv("EMOENGINE_MODELS", str(ort8.models))
    monkeypatch.chdir(ort8.cwd)
    again = open_emonet("ort", weights=str(golden_pth_8))
    try:
        assert tree(ort8.models) == ort8.files
        assert ort8.onnx.stat().st_mtime_ns == ort8.mtime
        assert again.runner.metadata["checkpoint_sha256"] == hashlib.sha256(golden_pth_8.read_bytes()).hexdigest()
    finally:
        again.close()


# --- refusals ---------------------------------------------------------------------------------------------------


def test_ort_cuda_without_cuda_provider_is_one_line_and_exports_nothing(golden_pth_8, tmp_path, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    monkeypatch.setenv("EMOENGINE_MODELS", str(tmp_path / "models"))
    with pytest.raises(UserInputError) as e:
        open_emonet("ort-cuda", weights=str(golden_pth_8))
    message = str(e.value)
    assert "\n" not in message and "CUDAExecutionProvider" in message and "onnxruntime-gpu" in message
    assert tree(tmp_path / "models") == []


def test_torch_cuda_without_gpu_is_one_line_before_loading(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(UserInputError) as e:
        open_emonet("torch-cuda", weights="random")
    assert "\n" not in str(e.value) and "torch-cuda" in str(e.value)
    assert "RANDOM" not in capsys.readouterr().err  # refused before building (and announcing) random weights


def test_full_taps_on_an_onnx_without_them_is_refused(ort8):
    with pytest.raises(UserInputError) as e:
        open_emonet("ort", model=str(ort8.onnx), full_taps=True)
    assert "\n" not in str(e.value) and "--full-taps" in str(e.value) and str(ort8.onnx) in str(e.value)


def test_missing_model_file_is_refused():
    with pytest.raises(UserInputError, match="no such model file"):
        open_emonet("ort", model="does/not/exist.onnx")
