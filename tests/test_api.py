"""The Python API (issue 13, section 4): `Engine.predict` against upstream's forward hooks on the golden 13 layers
(ort and torch), `analyze` against `run`'s own predictions.csv, and `stream`'s laziness, early close and bounded
memory. Real parts throughout: the golden weights exported by the real exporter, ONNX Runtime, MTCNN, PyAV files
made from the photo shipped in insightface's wheel."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

import emoengine
from emoengine.compare import FP32_TOLERANCE, TAP_TOLERANCE, relative_diff
from emoengine.engine.run.demo import single_face_frames, write_clip
from emoengine.errors import UserInputError

pytest.importorskip("torch", reason="the golden .pth and the exports need PyTorch")
pytest.importorskip("av", reason="the clips are written and read with PyAV")
pytest.importorskip("insightface", reason="the clips are made from the photo shipped in insightface's wheel")
pytest.importorskip("pandas", reason="Analysis.predictions is a pandas DataFrame")


def _test_taps():
    """tests/test_taps.py's golden layer list and comparator (one comparator for every tap test)."""
    spec = importlib.util.spec_from_file_location("_emoengine_test_taps", Path(__file__).with_name("test_taps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TAPS = _test_taps()
GOLDEN_LAYERS, tap_errors = _TAPS.GOLDEN_LAYERS, _TAPS.tap_errors
TORCH_CROPS = 4   # every golden crop, as on ort (eager torch with 13 taps is the slow part of this file)
STREAM_FRAMES = 240


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("emoengine-") and t.is_alive()]


@pytest.fixture(scope="module")
def golden_taps(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "emonet8.taps.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOENGINE_MODELS", str(path))
        yield path


@pytest.fixture(scope="module")
def engine(models, golden_pth_8):
    """One Engine for the file: the golden 8-class weights on ONNX Runtime, every golden layer tapped."""
    with emoengine.Engine(weights=str(golden_pth_8), backend="ort", taps=GOLDEN_LAYERS) as e:
        yield e


def check_predictions(out: dict, golden: dict, golden_taps: dict, n: int) -> None:
    errors = tap_errors({name: out[name] for name in GOLDEN_LAYERS},
                        {k: v if k.endswith("__slice") else v[:n] for k, v in golden_taps.items()})
    assert all(e <= TAP_TOLERANCE for e in errors.values()), errors
    assert all(out[name].dtype == np.float32 and len(out[name]) == n for name in GOLDEN_LAYERS)
    for key in ("expression", "valence", "arousal", "heatmap"):
        ref = golden[key][:n]
        assert out[key].shape == ref.shape and relative_diff(out[key], ref) <= FP32_TOLERANCE, key
    assert np.allclose(out["probabilities"].sum(axis=1), 1) and out["landmarks"].shape == (n, 68, 2)
    assert np.array_equal(out["probabilities"].argmax(1), golden["expression"][:n].argmax(1))


def test_predict_on_ort_gives_every_golden_layer_within_tolerance(engine, golden_outputs, golden_taps):
    golden = golden_outputs(8)
    check_predictions(engine.predict(golden["images_rgb"]), golden, golden_taps, len(golden["images_rgb"]))


def test_predict_on_torch_gives_every_golden_layer_within_tolerance(models, golden_pth_8, golden_outputs,
                                                                   golden_taps):
    golden = golden_outputs(8)
    with emoengine.Engine(weights=str(golden_pth_8), backend="torch", taps=GOLDEN_LAYERS) as e:
        out = e.predict(golden["images_rgb"][:TORCH_CROPS])
    check_predictions(out, golden, golden_taps, TORCH_CROPS)
    with pytest.raises(UserInputError, match="closed"):
        e.predict(golden["images_rgb"][:1])


def test_bad_input_is_one_line_value_error_before_anything_opens(engine, golden_pth_8):
    for crops in (np.zeros((1, 256, 256, 3), np.float32), np.zeros((2, 128, 128, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"uint8 RGB crops of shape \(N, 256, 256, 3\)") as e:
            engine.predict(crops)
        assert isinstance(e.value, UserInputError) and "\n" not in str(e.value)
    for options, message in (({"smooth": 2.0}, "smooth must be >= 0.0 and <= 0.99"),
                             ({"smoothing": 0.5}, "unknown Engine option"),
                             ({"crop": "round"}, "^crop must be square or upstream"),
                             ({"weights": None}, "give weights")):
        with pytest.raises(UserInputError, match=message):
            emoengine.Engine(**{"weights": str(golden_pth_8), **options})
    with pytest.raises(UserInputError, match="no such file"):
        next(iter(engine.stream("/no/such/clip.mp4")))
    assert not stage_threads()


def test_unknown_tap_names_the_closest_and_a_tap_missing_from_an_artifact_says_re_export(engine, models,
                                                                                        golden_pth_8):
    with pytest.raises(ValueError, match="emo_fc_2.1"):
        emoengine.Engine(weights=str(golden_pth_8), taps="conv1,emo_fc2.1")
    onnx = str(next(models.glob("emonet8-*-taps13-*.onnx")))
    with pytest.raises(UserInputError, match="re-export it with `emoengine export --taps m0,emo_fc_2.2`"):
        emoengine.Engine(model=onnx, taps=["m0", "emo_fc_2.2"], detector="none")


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """Three frames of a face, then one without (the main face's maps are NaN there)."""
    frames = [*single_face_frames(3, size=(200, 160), face_px=(100, 120))]
    return write_clip(tmp_path_factory.mktemp("api_media") / "face.mp4", [*frames, np.full_like(frames[0], 90)])


def test_analyze_predictions_equal_runs_csv(engine, face_clip, models, tmp_path):
    import pandas as pd

    from emoengine.cli.main import main as cli_main
    from emoengine.engine.run.records import FaceResult

    result = engine.analyze(face_clip, out=tmp_path / "api")
    onnx = next(models.glob("emonet8-*-taps13-*.onnx"))   # the Engine's export: the same graph for both
    with pytest.raises(SystemExit) as e:
        cli_main(["run", str(face_clip), "--model", str(onnx), "--out", str(tmp_path / "cli"), "--quiet"])
    assert e.value.code == 0
    ours, theirs = result.predictions, pd.read_csv(tmp_path / "cli" / "predictions.csv")
    assert list(ours.columns) == list(theirs.columns) and len(ours) == len(theirs) == 3
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=0, atol=1.01e-5)
    assert result.summary["frames"] == 4 and (tmp_path / "api" / "summary.json").is_file()
    maps = result.taps["conv1"]
    assert maps.shape == (4, 128, 128) and result.taps["emo_net_2.0.conv1"].shape == (4, 64, 64)
    assert np.isfinite(maps[:3]).all() and np.isnan(maps[3]).all()
    if "taps" in FaceResult.__dataclass_fields__:   # run --taps keeps every tap per face (branch issue13)
        assert result.taps["emo_fc_2.1"].shape == (4, 128) and result.taps["m0"].shape == (4, 64, 64)
    page = result._repr_html_()
    assert "<table" in page and page.count("data:image/png;base64,") >= 2
    saved = result.save(tmp_path / "copy")
    assert {"predictions.csv", "annotated.mp4", "conv1.mp4", "summary.json"} <= set(result.files)
    assert sorted(p.name for p in saved.iterdir()) == sorted(result.files)


def test_analyze_without_out_keeps_files_while_the_result_lives(engine, tmp_path):
    import cv2

    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(next(single_face_frames(1, size=(200, 160))), cv2.COLOR_RGB2BGR))
    result = engine.analyze(photo)   # an image: one frame, annotated.png
    assert (result.dir / "annotated.png").is_file() and len(result.predictions) == 1
    assert result.taps["conv1"].shape == (1, 128, 128) and np.isfinite(result.taps["conv1"]).all()
    result.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "predictions.csv").read_bytes() == (result.dir / "predictions.csv").read_bytes()
    folder = result.dir
    del result
    assert not folder.exists()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """STREAM_FRAMES small frames, a face only in the first (EmoNet runs once; the rest is decode and detect)."""
    face = next(single_face_frames(1, size=(160, 160), face_px=(100, 100)))
    frames = (face if i == 0 else np.full_like(face, 90) for i in range(STREAM_FRAMES))
    return write_clip(tmp_path_factory.mktemp("api_stream") / "long.mp4", frames)


@pytest.fixture
def frames_read(monkeypatch) -> dict[str, int]:
    """How many frames the run's source has decoded so far."""
    import emoengine.engine.run.driver as run_module

    count = {"read": 0}
    real_open = run_module.open_source

    def counting_open(spec, **kwargs):
        source = real_open(spec, **kwargs)
        frames = source._frames

        def counted():
            for frame in frames():
                count["read"] += 1
                yield frame

        source._frames = counted
        return source

    monkeypatch.setattr(run_module, "open_source", counting_open)
    return count


def test_stream_is_lazy_and_closing_it_ends_the_pipeline(engine, long_clip, frames_read):
    stream = engine.stream(long_clip.resolve().as_uri())   # the stream path (file:// URL), as a camera's
    assert frames_read["read"] == 0 and not stage_threads()
    with stream:
        first = next(stream)
        at_first = frames_read["read"]
        assert at_first < STREAM_FRAMES, "the first result came only after the whole input was decoded"
        assert first.index == 0 and first.time_s == 0 and first.rgb.shape == (160, 160, 3)
        face = first.faces[0]
        assert face.probabilities.shape == (8,) and face.landmarks.shape == (68, 2) and face.box.shape == (4,)
        assert face.taps["conv1"].shape == (128, 128) and face.taps["emo_net_2.0.conv1"].shape == (64, 64)
        assert [f.index for f in (next(stream), next(stream))] == [1, 2]
    assert not stage_threads(), stage_threads()
    assert frames_read["read"] < STREAM_FRAMES
    assert next(stream, None) is None


def test_stream_holds_a_bounded_number_of_frames(engine, long_clip, monkeypatch):
    import emoengine.engine.run.pipeline as pipeline_module
    from emoengine.engine.run.records import FrameRecord

    lock, live = threading.Lock(), {"now": 0}

    class CountedRecord(FrameRecord):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            with lock:
                live["now"] += 1

        def __del__(self) -> None:
            with lock:
                live["now"] -= 1

    monkeypatch.setattr(pipeline_module, "FrameRecord", CountedRecord)
    seen, most = 0, 0
    stream = engine.stream(str(long_clip))
    for frame in stream:
        seen += 1
        most = max(most, live["now"])
        assert frame.index == seen - 1
    assert seen == STREAM_FRAMES and stream.summary["frames"] == STREAM_FRAMES
    assert 1 <= most <= 64, f"{most} frames alive at once"   # the pipeline's bounded queues, not the input's length
    assert not stage_threads()
