"""`run --taps` (issue 13): per-tap videos, mean PNGs and vector CSVs from a real clip through the real CLI code
path (in-process), with the golden 8-class weights exported once with the 13 golden layers tapped (conftest's
session export, which tests/test_taps.py checks), among them every tap these runs ask for.

The clip is the golden crops as 256x256 frames and `--detector none` makes each whole frame the face, so a run's
crop is the decoded frame itself and its values can be checked against the model run on those frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from emoengine.cli.main import main as cli_main
from emoengine.compare import FP32_TOLERANCE
from emoengine.contract import DEFAULT_TAPS
from emoengine.engine.outputs.featuremaps import GRID_GAP, GRID_TILE, colorize, feature_map_frame, grid_size

av = pytest.importorskip("av", reason="PyAV decodes the clip and the tap videos")

RUN_TAPS = "conv1,emo_net_2.0.conv1,m0,emo_fc_2.1"                 # three maps, one of them deep, and a vector


def run_cli(*args: str) -> int:
    """`emoengine ...` in this process (the console entry point always exits); its exit code."""
    with pytest.raises(SystemExit) as e:
        cli_main(list(args))
    return e.value.code


def decode_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_png(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def tap_model(onnx_taps13_8) -> Path:
    """Outputs the run's taps in full, and not emo_fc_2.2 (the in-place ReLU after emo_fc_2.1)."""
    return onnx_taps13_8[0]


@pytest.fixture(scope="module")
def clip(golden_outputs, tmp_path_factory) -> Path:
    from emoengine.engine.run.demo import write_clip

    return write_clip(tmp_path_factory.mktemp("media") / "crops.mp4", golden_outputs(8)["images_rgb"], fps=4)


@pytest.fixture(scope="module")
def expected(tap_model, clip):
    """The model run on the clip's decoded frames: what the run's crops are (the whole 256x256 frame)."""
    from emoengine.engine.model.emonet_model import open_emonet

    frames = decode_rgb(clip)
    model = open_emonet("ort", model=str(tap_model), max_batch=1)
    try:
        return frames, model.predict(frames)
    finally:
        model.close()


@pytest.fixture(scope="module")
def mean_run(tap_model, clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run_mean")
    code = run_cli("run", str(clip), "--model", str(tap_model), "--detector", "none", "--taps", RUN_TAPS,
                   "--save-activations", "--out", str(out), "-q")
    assert code == 0
    return out


def test_every_tap_gets_its_files_and_summary_lists_them(mean_run, clip):
    summary = json.loads((mean_run / "summary.json").read_text())
    assert summary["taps"] == [
        {"name": "conv1", "stem": "conv1", "kind": "map", "video": "conv1.mp4", "mean": "conv1_mean.png"},
        {"name": "emo_net_2.0.conv1", "stem": "emo_conv1", "kind": "map", "video": "emo_conv1.mp4",
         "mean": "emo_conv1_mean.png"},
        {"name": "m0", "stem": "m0", "kind": "map", "video": "m0.mp4", "mean": "m0_mean.png"},
        {"name": "emo_fc_2.1", "stem": "emo_fc_2.1", "kind": "vector", "video": None, "mean": None}]
    n_input = len(decode_rgb(clip))
    for stem in ("conv1", "emo_conv1", "m0"):
        frames = decode_rgb(mean_run / f"{stem}.mp4")
        assert frames.shape == (n_input, 256, 256, 3), stem    # one frame per input frame
    assert not (mean_run / "emo_fc_2.1.mp4").exists() and "emo_fc_2.1.csv" in summary["files"]
    page = (mean_run / "report.html").read_text()
    assert "m0.mp4" in page and "m0_mean.png" in page          # the report reads the taps list


def test_mean_png_is_the_mean_of_the_per_frame_maps(mean_run, expected):
    """Tolerance: the model here and in the run see the same decoded frames, so the maps agree to float rounding;
    after min-max to 0..255 a value may land one grey level over, a few RGB units in viridis: |diff| <= 8."""
    _, batch = expected
    for name, stem in (("m0", "m0"), ("emo_net_2.0.conv1", "emo_conv1")):
        want = feature_map_frame(batch.taps[name].mean(axis=1).mean(axis=0), (256, 256))
        got = read_png(mean_run / f"{stem}_mean.png")
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 8 and diff.mean() < 0.5, (stem, diff.max(), diff.mean())
    with np.load(mean_run / "activations.npz") as z:   # --save-activations: one array per tap, a row per face
        # the artifact has every run tap in full (--taps exported them), so each map tap has its channel means
        assert set(z.files) == {"frames", "face_ids", "time_s", "conv1_mean", "conv1_channels", "emo_conv1_mean",
                                "emo_conv1_channels", "m0_mean", "m0_channels", "emo_fc_2.1"}
        m0, channels = z["m0_mean"].astype(np.float32), z["m0_channels"]
        assert z["frames"].tolist() == list(range(len(batch))) and z["emo_fc_2.1"].shape == (len(batch), 128)
    ref = batch.taps["m0"].mean(axis=1)
    assert np.abs(m0 - ref).max() <= 2e-3 * np.abs(ref).max()    # stored as float16
    ref = batch.taps["m0"].mean(axis=(2, 3))
    assert channels.dtype == np.float32 and np.abs(channels - ref).max() <= 1e-4 * np.abs(ref).max()


def test_vector_csv_holds_the_models_output_for_each_crop(mean_run, expected):
    """Tolerance: the fp32 one (emoengine.compare) of the tap's largest magnitude; the CSV keeps 6 significant
    digits."""
    _, batch = expected
    with open(mean_run / "emo_fc_2.1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = batch.taps["emo_fc_2.1"]
    assert [int(r["frame"]) for r in rows] == list(range(len(want))) and {r["face_id"] for r in rows} == {"0"}
    got = np.array([[float(r[f"f{i}"]) for i in range(want.shape[1])] for r in rows])
    assert np.abs(got - want).max() <= FP32_TOLERANCE * np.abs(want).max()


def test_grid_view_tiles_the_channels(tap_model, clip, expected, tmp_path):
    out = tmp_path / "grid"
    assert run_cli("run", str(clip), "--model", str(tap_model), "--detector", "none", "--taps", "conv1,m0",
                   "--tap-view", "grid", "--no-report", "--out", str(out), "-q") == 0
    frames, batch = expected
    assert grid_size(64) == (8 * GRID_TILE + 7 * GRID_GAP,) * 2 == (526, 526)   # README: 8 x 8 tiles of 64 px
    for stem in ("conv1", "m0"):   # 64 and 256 channels: the first 64 as 8 x 8 tiles
        video = decode_rgb(out / f"{stem}.mp4")
        assert video.shape == (len(frames), 526, 526, 3)
        assert read_png(out / f"{stem}_mean.png").shape == (526, 526, 3)
    # the mean PNG's first tile: channel 0 of m0 averaged over the frames, min-max scaled on its own
    tile = read_png(out / "m0_mean.png")[:GRID_TILE, :GRID_TILE]
    want = colorize(batch.taps["m0"][:, 0].mean(axis=0), (GRID_TILE, GRID_TILE))
    assert np.abs(tile.astype(int) - want.astype(int)).max() <= 8
    assert [t["name"] for t in json.loads((out / "summary.json").read_text())["taps"]] == ["conv1", "m0"]


@pytest.mark.parametrize("taps, words", [
    ("conv1,emo_net_2.2.conv9", ("unknown tap 'emo_net_2.2.conv9'", "closest: emo_net_2.2.conv3")),
    ("conv1,emo_fc2.1", ("emo_fc2.1", "emo_fc_2.1"))])
def test_unknown_tap_exits_2_with_one_line_and_writes_nothing(taps, words, clip, tmp_path, capsys):
    code = run_cli("run", str(clip), "--weights", "random", "--taps", taps, "--out", str(tmp_path / "o"), "-q")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("taps, words", [("conv1,emo_fc_2.2", ("emo_fc_2.2", "--taps emo_fc_2.2")),
                                         ("m0,avg_pool2", ("unknown tap 'avg_pool2'", "closest: avg_pool_2"))])
def test_tap_the_model_lacks_exits_2_saying_how_to_export_it(taps, words, tap_model, clip, tmp_path, capsys):
    out = tmp_path / "o"
    code = run_cli("run", str(clip), "--model", str(tap_model), "--detector", "none", "--taps", taps,
                   "--out", str(out), "-q")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err
    assert not out.exists() or list(out.iterdir()) == []


def test_run_config_asks_the_export_for_the_taps(tmp_path):
    from emoengine.settings import RunSettings

    def resolve(**options):
        cfg = RunSettings(weights="random", quiet=True, **options).resolve("x.mp4", tmp_path)
        return cfg, cfg.model_args

    cfg, model_args = resolve(taps="m0, emo_fc_2.1,m0")
    assert cfg.tap_names == ("m0", "emo_fc_2.1") and model_args["taps"] == ("m0", "emo_fc_2.1")
    cfg, model_args = resolve(taps=None)
    assert cfg.tap_names == DEFAULT_TAPS and model_args["taps"] == ()   # the export's channel means serve them
    cfg, model_args = resolve(taps=None, tap_view="grid")
    assert model_args["taps"] == DEFAULT_TAPS                            # a grid needs every channel
    cfg, model_args = resolve(taps=None, no_taps=True)
    assert cfg.taps is False and "taps" not in model_args


def test_writers_keep_no_video_for_a_vector_and_a_later_run_removes_the_earlier_taps_files(tmp_path):
    """RunOutputs alone on synthetic faces: a map tap's video frames follow the input frames (black without a
    face), a vector tap is a CSV only, and a second run with the default taps into the same folder leaves none
    of the first run's tap files behind (their names come from its summary.json)."""
    from emoengine.engine.model.tapset import TapSpec
    from emoengine.engine.outputs.run_outputs import RunOutputs
    from emoengine.engine.run.records import FaceResult, FrameRecord

    specs = (TapSpec.of("m0", (4, 8, 8)), TapSpec.of("avg_pool_2", (3, 1, 1)))
    assert [s.kind for s in specs] == ["map", "vector"]
    rng = np.random.default_rng(0)
    outputs = RunOutputs(tmp_path, ("a", "b"), fps=10, still=False, taps=specs, report=False)
    for i in range(3):
        faces = [] if i == 1 else [FaceResult(
            box=np.array([4, 4, 40, 40], np.float32), det_score=0.9, landmarks5=np.zeros((5, 2), np.float32),
            logits=np.zeros(2, np.float32), probs=np.full(2, 0.5, np.float32), expression="a", valence=0.0,
            arousal=0.0, landmarks68=np.zeros((68, 2), np.float32), face_id=7,
            taps={"m0": rng.random((8, 8), dtype=np.float32), "avg_pool_2": np.array([1, 2, 3], np.float32)})]
        outputs.write(FrameRecord(i, i / 10, np.full((48, 64, 3), 60, np.uint8), faces))
    outputs.commit({"frames": 3})
    assert len(decode_rgb(tmp_path / "m0.mp4")) == 3 and not (tmp_path / "avg_pool_2.mp4").exists()
    with open(tmp_path / "avg_pool_2.csv", newline="") as f:
        assert list(csv.reader(f)) == [["frame", "time_s", "face_id", "f0", "f1", "f2"],
                                       ["0", "0.0000", "7", "1", "2", "3"], ["2", "0.2000", "7", "1", "2", "3"]]
    outputs = RunOutputs(tmp_path, ("a", "b"), fps=10, still=False, report=False)
    outputs.write(FrameRecord(0, 0.0, np.full((48, 64, 3), 60, np.uint8), []))
    outputs.commit({"frames": 1})
    assert not [n for n in ("m0.mp4", "m0_mean.png", "avg_pool_2.csv") if (tmp_path / n).exists()]
    assert [t["stem"] for t in json.loads((tmp_path / "summary.json").read_text())["taps"]] == ["conv1", "emo_conv1"]
