"""Frame sources on media the tests make: a face photo moving over a background, as mp4, MPEG-TS, images."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emoengine.engine.sources import container_checks
from emoengine.engine.sources import opener as sources
from emoengine.engine.sources import video as video_sources
from emoengine.engine.sources.opener import Frame, open_source
from emoengine.errors import RunFailure, UserInputError

W, H, N = 160, 112, 20


def face_photo(size: int = 56) -> np.ndarray:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def moving_face_frames(n: int = N, w: int = W, h: int = H) -> list[np.ndarray]:
    face = face_photo()
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 96)], -1).astype(np.uint8)
    frames = []
    for i in range(n):
        img = background.copy()
        x, y = 4 + 4 * i % (w - 60), 20 + (i % 5)
        img[y:y + face.shape[0], x:x + face.shape[1]] = face
        frames.append(img)
    return frames


def encode(path: Path, frames: list[np.ndarray], rate=Fraction(24), fmt: str | None = None,
           options: dict | None = None) -> Path:
    with av.open(str(path), "w", format=fmt, container_options=options or {}) as c:
        s = c.add_stream("libx264", rate=rate)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.codec_context.options = {"crf": "12"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return moving_face_frames()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, frames) -> Path:
    return encode(tmp_path_factory.mktemp("media") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def faststart_mp4(tmp_path_factory, frames) -> Path:
    return encode(tmp_path_factory.mktemp("media") / "fast.mp4", frames, options={"movflags": "+faststart"})


def check_frames(got: list[Frame], written: list[np.ndarray], fps: float) -> None:
    assert [f.index for f in got] == list(range(len(written)))
    assert [f.time_s for f in got] == pytest.approx([i / fps for i in range(len(written))], abs=1e-6)
    for f, img in zip(got, written, strict=True):
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == img.shape
        assert f.rgb.flags.c_contiguous and f.rgb.flags.owndata
        assert psnr(f.rgb, img) > 30


def test_video_file_round_trip(mp4, frames):
    with open_source(mp4) as src:
        assert (src.kind, src.fps, src.frame_count, src.size) == ("video", 24.0, N, (W, H))
        got = list(src)
    check_frames(got, frames, 24.0)
    assert not any(np.shares_memory(a.rgb, b.rgb) for a, b in itertools.pairwise(got))


def test_fractional_fps_keeps_pts_times(tmp_path, frames):
    path = encode(tmp_path / "ntsc.mp4", frames[:8], rate=Fraction(30000, 1001))
    with open_source(str(path)) as src:
        assert src.fps == pytest.approx(30000 / 1001)
        got = list(src)
    check_frames(got, frames[:8], 30000 / 1001)


def test_stream_path_via_file_url(tmp_path, frames):
    folder = tmp_path / "a dir ü"
    folder.mkdir()
    ts = encode(folder / "live.ts", frames, fmt="mpegts")
    with open_source(ts.as_uri()) as src:  # file:///... percent-encoded, through the stream code path
        assert (src.kind, src.frame_count, src.fps, src.size) == ("stream", None, 24.0, (W, H))
        got = list(src)
    check_frames(got, frames, 24.0)  # time_s relative to the first pts (MPEG-TS starts at 1.4 s)


def test_stalled_tcp_stream_fails_after_its_frames(monkeypatch, tmp_path):
    """A live source that stops sending: the frames that came are delivered, then one clear RunFailure."""
    data = encode(tmp_path / "live.ts", moving_face_frames(60), fmt="mpegts").read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        conn, _ = server.accept()
        conn.sendall(data[: len(data) * 2 // 3])
        done.wait(10)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(video_sources, "STREAM_TIMEOUT_S", 1.0)
    try:
        src = open_source(f"tcp://127.0.0.1:{server.getsockname()[1]}")
        assert (src.kind, src.frame_count) == ("stream", None)
        got = []
        with pytest.raises(RunFailure, match=r"stopped after frame \d+ \(no data for 1 s\)"):
            for f in src:
                got.append(f)
        assert 10 < len(got) < 60
        assert all(psnr(f.rgb, img) > 30 for f, img in zip(got, moving_face_frames(60), strict=False))
        src.close()
    finally:
        done.set()
        server.close()


def test_missing_stream_file_url(tmp_path):
    with pytest.raises(UserInputError, match="cannot open stream"):
        open_source((tmp_path / "nope.ts").as_uri())


def test_unsupported_scheme():
    with pytest.raises(UserInputError, match="unsupported stream URL scheme"):
        open_source("gopher://example/clip")


def test_missing_path(tmp_path):
    with pytest.raises(UserInputError, match="no such file or folder"):
        open_source(tmp_path / "missing.mp4")


@pytest.mark.parametrize("content", [b"this is not a video\n" * 20, b""])
def test_text_file_named_mp4(tmp_path, content):
    path = tmp_path / "notes.mp4"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match="not a readable video"):
        open_source(path)


@pytest.mark.parametrize("fixture", ["mp4", "faststart_mp4"])
def test_mp4_cut_in_half(request, tmp_path, fixture):
    """Default muxing: no moov at all; faststart: the index promises more data than is there."""
    data = request.getfixturevalue(fixture).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"truncated video: .*cut\.mp4"):
        open_source(cut)


def test_video_shorter_than_its_index(tmp_path, faststart_mp4):
    """Boxes consistent (mdat resized to what is left) but the index lists frames that are gone."""
    with av.open(str(faststart_mp4)) as c:
        positions = sorted(p.pos for p in c.demux(c.streams.video[0]) if p.size)
    data = bytearray(faststart_mp4.read_bytes())
    mdat = data.find(b"mdat") - 4
    cut = positions[12]  # on a packet boundary: the demuxer just ends early, without an error
    data = data[:cut]
    data[mdat:mdat + 4] = struct.pack(">I", cut - mdat)
    path = tmp_path / "short.mp4"
    path.write_bytes(bytes(data))
    assert container_checks.mp4_truncation(path) is None
    with open_source(path) as src, \
            pytest.raises(UserInputError, match=rf"it ends at frame \d+ of the {N} its index lists"):
        list(src)


def test_decode_error_mid_stream_skips_the_frame_and_names_it(tmp_path, faststart_mp4, frames):
    """A damaged frame is skipped and recorded; the frames around it still come (the run reports the loss)."""
    with av.open(str(faststart_mp4)) as c:
        positions = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(faststart_mp4.read_bytes())
    data[positions[12]:positions[12] + 4] = b"\xff\xff\xff\xff"  # a NAL length far past the packet
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with open_source(bad) as src:
        got = list(src)
    assert src.bad_frames >= 1 and len(got) + src.bad_frames == N
    first = src.decode_errors[0]
    assert 3 <= first["after_frame"] <= 12 and first["error"]
    assert [f.index for f in got] == list(range(len(got)))
    assert all(psnr(f.rgb, img) > 30 for f, img in zip(got[:4], frames[:4], strict=True))


def test_rotated_video_is_turned_upright(tmp_path):
    """Phone videos carry a display matrix; frames come out as the phone showed them."""
    img = np.zeros((48, 80, 3), np.uint8)
    img[:10, :20] = (255, 0, 0)  # red block top-left
    path = encode(tmp_path / "rot.mp4", [img] * 3)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") + 4 + 4 + 4 * 5 + 8 + 8  # version 0 tkhd: skip to the 3x3 matrix
    assert struct.unpack(">9i", data[at:at + 36])[0] == 0x10000
    data[at:at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)  # 90° clockwise
    path.write_bytes(bytes(data))
    with open_source(path) as src:
        assert src.size == (48, 80)
        rgb = next(iter(src)).rgb
    assert rgb.shape == (80, 48, 3)
    assert rgb[:20, -10:, 0].mean() > 200 and rgb[:20, :10, 0].mean() < 60  # now top-right


def test_opencv_fallback(monkeypatch, mp4, frames):
    def refuse(self, url, kind):
        raise sources._CannotOpen("decoder missing")

    monkeypatch.setattr(sources.PyAVSource, "__init__", refuse)
    with open_source(mp4) as src:
        assert isinstance(src, sources.OpenCVVideoSource)
        assert (src.kind, src.fps, src.frame_count, src.size) == ("video", 24.0, N, (W, H))
        got = list(src)
    check_frames(got, frames, 24.0)


def test_iterates_once(mp4):
    with open_source(mp4) as src:
        list(src)
        with pytest.raises(RuntimeError):
            iter(src)


def write_image(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    buf.tofile(str(path))


def test_image_folder_natural_order_and_conversions(tmp_path, frames):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = frames[0]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    write_image(folder / "img10.png", bgr)
    write_image(folder / "img2.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))       # grayscale
    write_image(folder / "img1.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))       # with alpha
    write_image(folder / "Bild_ü3.jpg", bgr)                                       # unicode name
    (folder / "notes.txt").write_text("skip me")
    write_image(folder / ".hidden.png", bgr)
    with open_source(folder, fps=5) as src:
        assert (src.kind, src.frame_count, src.fps, src.size) == ("images", 4, 5.0, (W, H))
        assert [p.name for p in src.paths] == ["Bild_ü3.jpg", "img1.png", "img2.png", "img10.png"]
        got = list(src)
    assert [f.time_s for f in got] == [0.0, 0.2, 0.4, 0.6]
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in got)
    assert psnr(got[0].rgb, rgb) > 30                      # jpeg
    assert np.array_equal(got[1].rgb, rgb)                 # RGBA -> RGB, lossless
    gray = got[2].rgb
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.array_equal(got[3].rgb, rgb)


def test_single_image(tmp_path, frames):
    path = tmp_path / "face.png"
    write_image(path, cv2.cvtColor(frames[3], cv2.COLOR_RGB2BGR))
    with open_source(path) as src:
        assert (src.kind, src.frame_count, src.fps, src.size) == ("image", 1, 1.0, (W, H))
        got = list(src)
    assert len(got) == 1 and got[0].time_s == 0.0 and np.array_equal(got[0].rgb, frames[3])


def test_unreadable_image_and_empty_folder(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    with pytest.raises(UserInputError, match="not a readable image"):
        open_source(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(UserInputError, match="no images in folder"):
        open_source(empty)


def test_missing_camera():
    with pytest.raises(UserInputError, match="cannot open camera 63"):
        open_source("63")
