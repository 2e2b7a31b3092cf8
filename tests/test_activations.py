"""activations.npz (issue 21, "taps as data"): one array per tap stacked over predictions.csv's (frame, face) rows,
each map tap's per-channel spatial means as a time course, the same arrays from `Engine.analyze`; and the tap
table (contract.DEFAULT_TAP_SPECS) as the one place a tap-like output is described."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from emoengine import contract
from emoengine.contract import TapSpec

pytest.importorskip("av", reason="PyAV writes and decodes the clips")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def two_face_frames(n: int) -> list[np.ndarray]:
    """n frames of two faces (one still, one moving), so a frame has more than one row."""
    from emoengine.engine.run.demo import shipped_photo

    face = cv2.resize(shipped_photo("Tom_Hanks_54745.png"), (120, 120))
    frames = []
    for i in range(n):
        rgb = np.full((200, 360, 3), 90, np.uint8)
        rgb[40:160, 20:140] = face
        x = 200 + 4 * i
        rgb[40:160, x:x + 120] = face
        frames.append(rgb)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from emoengine.engine.run.demo import write_clip

    return write_clip(tmp_path_factory.mktemp("media") / "two_faces.mp4", two_face_frames(4), fps=8)


@pytest.fixture(scope="module")
def analyzed(clip, tmp_path_factory, requires):
    """One real run (ONNX Runtime, random weights exported with the default taps in full, as a run from weights
    with save_activations is), through Engine.analyze, with full_taps: the full tensors in the archive too."""
    requires("mtcnn")
    from emoengine import Engine

    out = tmp_path_factory.mktemp("analyzed")
    with Engine(weights="random", backend="ort", save_activations=True, full_taps=True, no_report=True) as engine:
        result = engine.analyze(clip, out=out)
        yield out, result


def test_the_archive_holds_one_array_per_tap_in_predictions_rows(analyzed):
    out, _ = analyzed
    rows = read_rows(out / "predictions.csv")
    with np.load(out / "activations.npz") as z:
        assert set(z.files) == {"frames", "face_ids", "time_s", "conv1", "conv1_channels", "emo_conv1",
                                "emo_conv1_channels"}
        n = len(rows)
        assert n >= 4 and len(set(z["frames"].tolist())) < n   # frames with more than one face
        index = list(zip(z["frames"].tolist(), z["face_ids"].tolist(), strict=True))
        assert [(int(r["frame"]), int(r["face_id"])) for r in rows] == index
        np.testing.assert_allclose(z["time_s"], [float(r["time_s"]) for r in rows], atol=1e-4)
        assert z["conv1"].shape == (n, 64, 128, 128) and z["conv1"].dtype == np.float16
        assert z["emo_conv1"].shape == (n, 128, 64, 64)
        for stem, channels in (("conv1", 64), ("emo_conv1", 128)):
            got = z[f"{stem}_channels"]
            assert got.shape == (n, channels) and got.dtype == np.float32
            want = z[stem].astype(np.float32).mean(axis=(2, 3))   # of the float16 copy: its rounding allowed
            assert np.abs(got - want).max() <= 2e-3 * max(np.abs(want).max(), 1e-6), stem


def test_analyze_returns_the_same_arrays(analyzed):
    out, result = analyzed
    acts = result.activations
    with np.load(out / "activations.npz") as z:
        assert sorted(acts.keys()) == sorted(z.files)
        for key in ("frames", "face_ids", "time_s"):
            np.testing.assert_array_equal(getattr(acts, key), z[key])
        np.testing.assert_array_equal(acts["conv1"], z["conv1"])
        np.testing.assert_array_equal(acts["emo_net_2.0.conv1"], z["emo_conv1"])   # by module path or stem
        np.testing.assert_array_equal(acts.channels("emo_net_2.0.conv1"), z["emo_conv1_channels"])
    assert len(acts) == len(result.predictions)
    with pytest.raises(KeyError):
        acts["m0"]


# -- the table drives it all ------------------------------------------------------------------------------------

EXTRA = TapSpec("layer3", "map", (4, 8, 8), stem="l3", mean_output="l3_mean", full_output="l3_full")


class TableRunner:
    """A runner with every output the (patched) tap table names, each face's maps filled with its crop's first
    pixel, so the values are known: post-processing and writers under test, not a network."""

    backend = "fake"

    def __init__(self) -> None:
        from emoengine.contract import output_names

        self.input_names = ["image"]
        self.output_names = [*output_names(False), *(s.mean_output for s in contract.DEFAULT_TAP_SPECS[2:]),
                             *(s.full_output for s in contract.DEFAULT_TAP_SPECS)]
        self.metadata = {"num_classes": "8", "is_random": "true"}

    def infer(self, feeds, max_batch: int = 32) -> dict:
        x = feeds["image"]
        n = len(x)
        ids = x[:, 0, 0, 0].astype(np.float32)
        out = {"expression": np.zeros((n, 8), np.float32), "valence": ids / 10, "arousal": -ids / 10,
               "heatmap": np.zeros((n, 68, 64, 64), np.float32)}
        for spec in contract.DEFAULT_TAP_SPECS:
            full = np.arange(np.prod(spec.shape), dtype=np.float32).reshape(spec.shape) / 100
            out[spec.full_output] = full[None] + ids[:, None, None, None]
            out[spec.mean_output] = out[spec.full_output].mean(axis=1)
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def three_defaults(monkeypatch):
    """The tap table with a third entry: nothing else is told of it."""
    monkeypatch.setattr(contract, "DEFAULT_TAP_SPECS", (*contract.DEFAULT_TAP_SPECS, EXTRA))


def test_a_third_table_entry_reaches_the_model_the_faces_and_the_specs(three_defaults):
    from emoengine.engine.model.emonet_model import EmoNetModel
    from emoengine.engine.model.tapset import face_channels, face_taps, run_tap_names, run_tap_specs

    model = EmoNetModel(TableRunner())
    assert model.has_taps and model.has_full_taps and "layer3" in model.taps
    names = run_tap_names(None)
    assert names == ("conv1", "emo_net_2.0.conv1", "layer3")
    specs = run_tap_specs(model, names)
    assert specs[2] is EXTRA
    crops = np.zeros((2, 256, 256, 3), np.uint8)
    crops[1, 0, 0, 0] = 5
    batch = model.predict(crops)
    np.testing.assert_allclose(face_taps(batch, 1, specs)["layer3"], batch.taps["l3_mean"][1])
    np.testing.assert_allclose(face_channels(batch, 1, specs)["layer3"], batch.taps["l3_full"][1].mean(axis=(1, 2)))
    assert model.module_taps(batch)["layer3"] is batch.taps["l3_full"]


def test_a_third_table_entry_gets_a_runs_files_and_activations(three_defaults, tmp_path):
    from emoengine.engine.model.emonet_model import EmoNetModel
    from emoengine.engine.run.demo import write_clip
    from emoengine.engine.run.driver import run_pipeline
    from emoengine.settings import RunSettings

    frames = [np.full((64, 64, 3), 10 * i, np.uint8) for i in range(3)]
    clip = write_clip(tmp_path / "flat.mp4", frames, fps=4)
    cfg = RunSettings(model="table.onnx", detector="none", save_activations=True, no_report=True,
                      quiet=True).resolve(clip, tmp_path / "out")
    run_pipeline(cfg, EmoNetModel(TableRunner()), detector=None)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert [t["stem"] for t in summary["taps"]] == ["conv1", "emo_conv1", "l3"]
    assert {"l3.mp4", "l3_mean.png", "conv1.mp4", "emo_conv1_mean.png"} <= set(summary["files"])
    with np.load(out / "activations.npz") as z:
        assert {"l3_mean", "l3_channels", "conv1_channels", "emo_conv1_channels"} <= set(z.files)
        assert z["l3_channels"].shape == (3, 4) and z["l3_mean"].shape == (3, 8, 8)
        assert z["frames"].tolist() == [0, 1, 2]


def test_a_model_without_full_maps_gives_means_only_and_an_abort_leaves_nothing(tmp_path, caplog):
    """A --model artifact without --full-taps has no full conv1: the archive keeps the channel-mean maps, says
    why there are no per-channel means, and an aborted run leaves neither the archive nor its row files."""
    from emoengine.engine.outputs.activations import ActivationsWriter
    from emoengine.engine.run.records import FaceResult, FrameRecord

    specs = contract.DEFAULT_TAP_SPECS

    def face(fid: int) -> FaceResult:
        return FaceResult(box=np.zeros(4, np.float32), det_score=1.0, landmarks5=np.zeros((5, 2), np.float32),
                          logits=np.zeros(8, np.float32), probs=np.full(8, 1 / 8, np.float32), expression="Neutral",
                          valence=0.0, arousal=0.0, landmarks68=np.zeros((68, 2), np.float32), face_id=fid,
                          taps={s.name: np.full(s.shape[1:], fid, np.float32) for s in specs})

    for keep in (True, False):
        path = tmp_path / f"{keep}" / "activations.npz"
        path.parent.mkdir()
        writer = ActivationsWriter(path, specs, full=False, has_full=())
        assert not writer.needs_channels and "no full conv1 tensor" in caplog.text
        for i in range(3):
            writer.add(FrameRecord(i, i / 4, np.zeros((8, 8, 3), np.uint8)), face(i % 2))
        if not keep:
            writer.abort()
            assert list(path.parent.iterdir()) == []
            continue
        writer.commit()
        assert [p.name for p in path.parent.iterdir()] == ["activations.npz"]
        with np.load(path) as z:
            assert set(z.files) == {"frames", "face_ids", "time_s", "conv1_mean", "emo_conv1_mean"}
            assert z["face_ids"].tolist() == [0, 1, 0] and z["emo_conv1_mean"].shape == (3, 64, 64)
            assert z["conv1_mean"][1].min() == 1
