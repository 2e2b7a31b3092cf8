"""Atomic outputs: nothing under a final name until complete; video frame counts, rates and pixels."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emoengine.engine.outputs.writers import (
    AtomicOutput,
    AtomicTextWriter,
    CsvWriter,
    VideoWriter,
    as_frame_rate,
    write_json,
    write_png,
)
from emoengine.errors import RunFailure


def gradient_frames(n: int, w: int, h: int) -> list[np.ndarray]:
    """Smooth, moving content (what H.264 at crf 20 keeps well above 30 dB)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        r = 127 + 100 * np.sin((xx + 3 * i) / 17.0)
        g = 127 + 100 * np.cos((yy - 2 * i) / 13.0)
        b = (xx + yy + 5 * i) % 256
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return out


def decode_all(path: Path) -> tuple[list[np.ndarray], tuple]:
    """Decoded frames and (frames in the index, average rate, width, height)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, (s.frames, s.average_rate, s.codec_context.width, s.codec_context.height)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- AtomicOutput


def test_atomic_output_commit(tmp_path):
    final = tmp_path / "out" / "annotated.mp4"
    out = AtomicOutput(final)
    assert out.tmp_path.parent == final.parent and out.tmp_path.name.startswith(".")
    assert out.tmp_path.suffix == ".mp4" and out.tmp_path != final and out.path == out.tmp_path
    out.path.write_bytes(b"data")
    assert not final.exists()
    assert out.commit() == final
    assert final.read_bytes() == b"data" and visible(final.parent) == ["annotated.mp4"]


def test_atomic_output_abort_keeps_the_old_file(tmp_path):
    final = tmp_path / "summary.json"
    final.write_text("old")
    with pytest.raises(ZeroDivisionError), AtomicOutput(final) as out:
        out.tmp_path.write_text("new, half written")
        _ = 1 / 0
    assert final.read_text() == "old" and visible(tmp_path) == ["summary.json"]
    out2 = AtomicOutput(final)
    out2.tmp_path.write_text("x")
    out2.abort()
    out2.abort()
    assert visible(tmp_path) == ["summary.json"]


def test_atomic_output_commit_without_data(tmp_path):
    with pytest.raises(RunFailure, match="nothing was written"):
        AtomicOutput(tmp_path / "x.png").commit()


# --------------------------------------------------------------------------- small files


def test_write_png_round_trip(tmp_path):
    rgb = gradient_frames(1, 33, 17)[0]
    path = write_png(tmp_path / "conv1_mean.png", rgb)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb) and visible(tmp_path) == ["conv1_mean.png"]


def test_write_json_numpy(tmp_path):
    path = write_json(tmp_path / "summary.json", {"frames": np.int64(3), "fps": np.float32(2.5),
                                                  "stages": {"decode": 0.1}, "ids": np.arange(2)})
    assert json.loads(path.read_text()) == {"frames": 3, "fps": 2.5, "stages": {"decode": 0.1}, "ids": [0, 1]}


def test_csv_writer_streams_then_appears(tmp_path):
    final = tmp_path / "predictions.csv"
    with CsvWriter(final, ["frame", "time_s", "p_happy"], float_format="{:.4f}") as w:
        w.writerow({"frame": 0, "time_s": 0.0, "p_happy": np.float32(0.123456)})
        w.writerows([{"frame": 1, "time_s": 1 / 24, "p_happy": 0.5}])
        assert not final.exists()
    rows = list(csv.DictReader(final.open()))
    assert rows == [{"frame": "0", "time_s": "0.0000", "p_happy": "0.1235"},
                    {"frame": "1", "time_s": "0.0417", "p_happy": "0.5000"}]
    assert w.rows == 2 and visible(tmp_path) == ["predictions.csv"]


def test_text_writer_abort_on_error(tmp_path):
    with pytest.raises(RuntimeError), AtomicTextWriter(tmp_path / "log.txt") as w:
        w.write("partial")
        raise RuntimeError("boom")
    assert visible(tmp_path) == []


# --------------------------------------------------------------------------- video


def test_frame_rates():
    assert as_frame_rate(29.97) == Fraction(30000, 1001)
    assert as_frame_rate(23.976) == Fraction(24000, 1001)
    assert as_frame_rate(25.0) == 25 and as_frame_rate(12.5) == Fraction(25, 2)
    assert as_frame_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    with pytest.raises(ValueError):
        as_frame_rate(0)


@pytest.mark.parametrize("fps, rate", [(24, Fraction(24)), (29.97, Fraction(30000, 1001)),
                                       (Fraction(25, 2), Fraction(25, 2))])
def test_video_writer_round_trip(tmp_path, fps, rate):
    frames = gradient_frames(17, 96, 64)
    final = tmp_path / "annotated.mp4"
    w = VideoWriter(final, fps, (96, 64))
    for f in frames:
        w.write(f)
    assert not final.exists() and len(visible(tmp_path)) == 1 and visible(tmp_path)[0].startswith(".")
    assert w.close() == final and visible(tmp_path) == ["annotated.mp4"]
    decoded, (count, avg_rate, width, height) = decode_all(final)
    assert len(decoded) == count == 17 and avg_rate == rate and (width, height) == (96, 64)
    assert min(psnr(d, f) for d, f in zip(decoded, frames, strict=True)) > 30


def test_video_writer_pads_odd_sizes(tmp_path):
    frames = gradient_frames(5, 81, 45)
    with VideoWriter(tmp_path / "odd.mp4", 10, (81, 45)) as w:
        for f in frames:
            w.write(f)
    decoded, (count, _, width, height) = decode_all(tmp_path / "odd.mp4")
    assert (width, height) == (82, 46) and len(decoded) == count == 5
    assert min(psnr(d[:45, :81], f) for d, f in zip(decoded, frames, strict=True)) > 30


def test_video_writer_letterboxes_other_sizes(tmp_path):
    with VideoWriter(tmp_path / "mixed.mp4", 1, (64, 64)) as w:
        w.write(np.full((64, 64, 3), 200, np.uint8))
        w.write(np.full((32, 64, 3), 200, np.uint8))  # wide image: black bars top and bottom
    decoded, (count, _, _, _) = decode_all(tmp_path / "mixed.mp4")
    assert count == 2 and decoded[1][:10].mean() < 30 and abs(float(decoded[1][28:36].mean()) - 200) < 8


def test_video_writer_abort_and_exception_leave_nothing(tmp_path):
    frames = gradient_frames(3, 32, 32)
    w = VideoWriter(tmp_path / "a.mp4", 24, (32, 32))
    w.write(frames[0])
    w.abort()
    assert visible(tmp_path) == []
    with pytest.raises(KeyError), VideoWriter(tmp_path / "b.mp4", 24, (32, 32)) as w:
        for f in frames:
            w.write(f)
        raise KeyError("stop")
    assert visible(tmp_path) == []


def test_video_writer_without_frames_writes_nothing(tmp_path):
    w = VideoWriter(tmp_path / "empty.mp4", 24, (32, 32))
    assert w.close() is None and visible(tmp_path) == []


def test_video_writer_rejects_bad_frames(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 24, (32, 32)) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((32, 32), np.uint8))
        with pytest.raises(ValueError):
            w.write(np.zeros((32, 32, 3), np.float32))
        w.write(np.zeros((32, 32, 3), np.uint8))
    assert visible(tmp_path) == ["x.mp4"]


def _picture_types(path: Path) -> set[str]:
    from av.video.frame import PictureType

    with av.open(str(path)) as c:
        return {PictureType(int(frame.pict_type)).name for frame in c.decode(video=0)}


def test_bframes_zero_writes_a_video_without_b_frames_and_the_preset_keeps_them(tmp_path):
    """`bframes=0` is what big videos get (encoder_bframes): x264 then holds no B-frame lookahead in memory."""
    frames = gradient_frames(24, 96, 64)
    for bframes, name in ((None, "preset.mp4"), (0, "none.mp4")):
        writer = VideoWriter(tmp_path / name, 24, (96, 64), preset="superfast", threads=1, bframes=bframes)
        for f in frames:
            writer.write(f)
        writer.close()
    assert "B" in _picture_types(tmp_path / "preset.mp4")
    assert "B" not in _picture_types(tmp_path / "none.mp4")


def test_big_videos_get_no_b_frames_and_shorter_encoder_queues():
    """Over 1080p the encoders hold fewer frames (a 48-frame 4K run: 1527 -> 1288 MB peak RSS, 2026-12-07)."""
    from emoengine.engine.outputs.encoders import QUEUE_FRAMES, encoder_bframes
    from emoengine.engine.run.records import queue_frames

    assert encoder_bframes((1280, 720)) is None and encoder_bframes((1920, 1080)) is None
    assert encoder_bframes((3840, 2160)) == 0
    assert queue_frames((1280, 720), most=QUEUE_FRAMES) == QUEUE_FRAMES
    assert queue_frames((3840, 2160), most=QUEUE_FRAMES) == 2
    assert [queue_frames(s) for s in ((640, 360), (1280, 720), (1920, 1080), (3840, 2160))] == [8, 6, 2, 2]
