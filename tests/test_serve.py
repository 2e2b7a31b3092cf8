"""`emoengine serve` (issue 22): the golden weights behind HTTP on a real local Ray Serve, reached with the real
`emoengine.Client` over loopback. One server for the module (a Ray start costs tens of seconds on 2 cores),
bound to 0.0.0.0 with a bearer token, so the token rules are tested on the bind that needs them.

Same answers: /v1/crops and /v1/faces against `Engine` on the same weights, judged by the one comparator
(emoengine.compare, fp32 row); /v1/videos' predictions.csv against `emoengine run`'s. Dynamic batching: eight
concurrent one-crop requests form batches of more than one crop (/metrics). Bad input: a matrix of hostile
requests, each a 4xx JSON error within a second, then a good request answered.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="emoengine serve needs Ray Serve (the [serve] extra)")
pytest.importorskip("torch", reason="the golden .pth is exported with PyTorch")
pytestmark = pytest.mark.slow

import emoengine
from emoengine.compare import compare
from emoengine.engine.serve.limits import Limits

TOKEN = "t0ken-for-the-serve-tests-0123456789"
OUTPUTS = ("expression", "probabilities", "valence", "arousal", "landmarks")

# A tap travels as float16: only rounding to 11 significant bits (2**-11 ~ 4.9e-4 of the largest value), no fp16
# arithmetic, so tighter than the fp16 row of emoengine.compare's table.
FLOAT16_WIRE_TOLERANCE = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(name: str) -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / name


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The export cache for the test process and every Ray worker (they inherit the environment at ray.init)."""
    old = os.environ.get("EMOENGINE_MODELS")
    os.environ["EMOENGINE_MODELS"] = str(tmp_path_factory.mktemp("serve-models"))
    yield Path(os.environ["EMOENGINE_MODELS"])
    if old is None:
        os.environ.pop("EMOENGINE_MODELS", None)
    else:
        os.environ["EMOENGINE_MODELS"] = old


@pytest.fixture(scope="module")
def engine_args(golden_pth_8, models_dir) -> dict:
    return dict(weights=str(golden_pth_8), backend="ort", detector="mtcnn")


@pytest.fixture(scope="module")
def engine(engine_args):
    with emoengine.Engine(**engine_args) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine, engine_args, tmp_path_factory):
    from emoengine.engine.serve.server import ServeConfig, start_server

    limits = Limits(upload_mb=8, video_upload_mb=16, image_pixels=20_000_000, crops=16, video_s=600,
                    video_frames=20_000)
    cfg = ServeConfig(engine_args, host="0.0.0.0", port=free_port(), replicas=1, max_batch=8, batch_wait_ms=20,
                      token=TOKEN, limits=limits, max_jobs=2, jobs_dir=str(tmp_path_factory.mktemp("jobs")),
                      cpus_per_replica=0.5)
    with start_server(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return emoengine.Client(server.url, token=TOKEN, timeout_s=60)


def test_crops_match_engine_predict_within_the_fp32_tolerance(client, engine, golden_crops_8):
    got = client.predict(golden_crops_8, taps=["conv1"])
    want = engine.predict(golden_crops_8)
    verdict = compare({k: got[k] for k in OUTPUTS}, {k: want[k] for k in OUTPUTS}, "fp32")
    assert verdict.passed, verdict.outputs
    # a tap travels as float16: within fp16's rounding of the layer's largest value
    assert np.abs(got["conv1"] - want["conv1"]).max() <= FLOAT16_WIRE_TOLERANCE * np.abs(want["conv1"]).max()


def test_concurrent_single_crops_are_batched_together(client, golden_crops_8):
    before = client.metrics()
    answers, errors = [], []

    def one(i: int) -> None:
        try:
            answers.append(client.predict(golden_crops_8[i % len(golden_crops_8)][None]))
        except Exception as e:
            errors.append(e)

    for _ in range(3):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    after = client.metrics()
    assert not errors and len(answers) == 24
    batches = after["emoengine_batch_size_count"] - before.get("emoengine_batch_size_count", 0)
    crops = after["emoengine_batch_size_sum"] - before.get("emoengine_batch_size_sum", 0)
    assert crops == 24 and batches < 24, (crops, batches)   # some EmoNet call held more than one crop


def test_faces_match_engine_on_the_same_image(client, engine):
    image = photo("t1.jpg")
    want = next(iter(engine.stream(str(image)))).faces
    got = client.faces(image, taps=["conv1", "emo_net_2.0.conv1"])
    assert len(got) == len(want) == 6
    for g, w in zip(sorted(got, key=lambda f: f.id), sorted(want, key=lambda f: f.id), strict=True):
        assert g.id == w.id and g.expression == w.expression
        np.testing.assert_allclose(g.box, w.box, atol=1e-4)
        verdict = compare({"probabilities": g.probabilities[None], "valence": np.array([g.valence]),
                           "arousal": np.array([g.arousal]), "landmarks": g.landmarks[None]},
                          {"probabilities": w.probabilities[None], "valence": np.array([w.valence]),
                           "arousal": np.array([w.arousal]), "landmarks": w.landmarks[None]}, "fp32")
        assert verdict.passed, verdict.outputs
        for name, tap in w.taps.items():   # channel means, float16 on the wire
            assert np.abs(g.taps[name] - tap).max() <= FLOAT16_WIRE_TOLERANCE * max(np.abs(tap).max(), 1e-6)


def test_faces_takes_a_multipart_upload(server, client):
    """A browser form's upload (a text field, then the file): the same faces as the plain JPEG body."""
    import httpx

    image = photo("t1.jpg")
    want = sorted(client.faces(image), key=lambda f: f.id)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/v1/faces", data={"note": "from a form"}, headers={"Authorization": f"Bearer {TOKEN}"},
                      files={"image": ("t1.jpg", image.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    got = sorted(r.json()["faces"], key=lambda f: f["id"])
    assert len(got) == len(want) == 6
    for g, w in zip(got, want, strict=True):
        assert g["id"] == w.id and g["expression"] == w.expression
        np.testing.assert_allclose(g["box"], w.box, atol=1e-4)
        np.testing.assert_allclose(g["probabilities"], w.probabilities, atol=1e-5)


def test_health_docs_and_metrics(client, server):
    health = client.health()
    assert health["status"] == "ok" and health["classes"][1] == "Happy"
    status, body, _ = client.request("GET", "/openapi.json")
    assert {"/v1/faces", "/v1/crops", "/v1/videos", "/healthz", "/metrics"} <= set(json.loads(body)["paths"])
    text = client.request("GET", "/metrics")[1].decode()
    for name in ("emoengine_requests_total", "emoengine_request_seconds_bucket", "emoengine_batch_size_bucket",
                 "emoengine_queue_depth"):
        assert name in text


# -- video jobs ------------------------------------------------------------------------------------------------
def write_clip(src: Path, dst: Path, frames: int) -> Path:
    """The first `frames` frames of `src`, re-encoded (a short real clip with faces)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            if i == 0:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def write_long_header_video(dst: Path) -> Path:
    """Three tiny frames at 1/18000 fps: a 1 kB file whose header says 15 hours."""
    from fractions import Fraction

    import av

    with av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(1, 18000))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    demo = Path(__file__).resolve().parents[1] / ".." / "shared" / "media" / "demo.mp4"
    if not demo.is_file():
        pytest.skip(f"no demo clip at {demo}")
    return write_clip(demo, tmp_path_factory.mktemp("clip") / "clip.mp4", 20)


def test_video_job_gives_runs_predictions_csv(client, clip, golden_pth_8, models_dir, tmp_path, cli):
    seen = []
    result = client.analyze(clip, tmp_path / "served", progress=seen.append, poll_s=0.2, timeout_s=300)
    assert {"predictions.csv", "summary.json", "annotated.mp4", "report.html"} <= set(result.files)
    assert result.summary["frames"] == 20 and (tmp_path / "served" / "annotated.mp4").stat().st_size > 0
    assert seen and all(job["state"] in ("queued", "running") for job in seen)
    run = _run_with(cli, clip, golden_pth_8, tmp_path, models_dir)
    assert run.returncode == 0, run.stderr
    served = (tmp_path / "served" / "predictions.csv").read_text()
    assert served == (tmp_path / "run" / "predictions.csv").read_text() and served.count("\n") > 20


def _run_with(cli, clip, pth, tmp_path, models_dir):
    """`emoengine run` on the clip with run's defaults (the export cache shared with the server)."""
    import shutil

    shutil.copytree(models_dir, tmp_path / "models", dirs_exist_ok=True)
    return cli("run", str(clip), "--weights", str(pth), "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)


# -- bad input ---------------------------------------------------------------------------------------------------
def npy(array, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height (a decompression bomb's shape) over a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9))
            + chunk(b"IEND", b""))


def zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "not a video " * 100)
    return buf.getvalue()


def hostile_requests(tmp_path: Path) -> list[tuple[str, str, str, dict, bytes, dict, int]]:
    """(case, method, path, params, body, headers, expected status)."""
    jpeg = photo("t1.jpg").read_bytes()
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(gif, "GIF")
    ok_crop = np.zeros((1, 256, 256, 3), np.uint8)
    lying = npy(np.zeros((2, 256, 256, 3), np.uint8))[: -256 * 256 * 3]
    npy_h, img_h, mp4_h = ({"Content-Type": t} for t in ("application/x-npy", "image/jpeg", "video/mp4"))
    long_video = write_long_header_video(tmp_path / "long.mp4").read_bytes()
    return [
        ("truncated JPEG", "POST", "/v1/faces", {}, jpeg[: len(jpeg) // 2], img_h, 422),
        ("PNG bomb header 30000x30000", "POST", "/v1/faces", {}, png_header_only(30000, 30000),
         {"Content-Type": "image/png"}, 413),
        ("100 MP image", "POST", "/v1/faces", {}, png_header_only(10000, 10000), {"Content-Type": "image/png"}, 413),
        ("0-byte body", "POST", "/v1/faces", {}, b"", img_h, 422),
        ("wrong content type", "POST", "/v1/faces", {}, jpeg, {"Content-Type": "text/plain"}, 415),
        ("a GIF", "POST", "/v1/faces", {}, gif.getvalue(), {"Content-Type": "image/png"}, 415),
        ("garbage as JPEG", "POST", "/v1/faces", {}, os.urandom(4096), img_h, 422),
        ("body over the upload limit", "POST", "/v1/faces", {}, b"\xff\xd8" + b"\0" * (9 << 20), img_h, 413),
        ("unknown tap", "POST", "/v1/faces", {"taps": "no_such_layer"}, jpeg, img_h, 422),
        ("non-RGB crops (RGBA)", "POST", "/v1/crops", {}, npy(np.zeros((1, 256, 256, 4), np.uint8)), npy_h, 422),
        ("NaN floats in npy", "POST", "/v1/crops", {}, npy(np.full((1, 256, 256, 3), np.nan, np.float32)),
         npy_h, 422),
        ("pickle .npy", "POST", "/v1/crops", {}, npy(np.array([{"x": 1}], dtype=object), allow_pickle=True),
         npy_h, 422),
        ("npy header longer than its data", "POST", "/v1/crops", {}, lying, npy_h, 422),
        ("too many crops", "POST", "/v1/crops", {}, npy(np.zeros((17, 256, 256, 3), np.uint8)), npy_h, 413),
        ("wrong crop size", "POST", "/v1/crops", {}, npy(np.zeros((1, 128, 128, 3), np.uint8)), npy_h, 422),
        ("garbage npy", "POST", "/v1/crops", {}, os.urandom(1000), npy_h, 422),
        ("crops as JPEG type", "POST", "/v1/crops", {}, npy(ok_crop), img_h, 415),
        ("zip posted as video", "POST", "/v1/videos", {}, zip_bytes(), mp4_h, 422),
        ("10-hour video header", "POST", "/v1/videos", {}, long_video, mp4_h, 413),
        ("video as text", "POST", "/v1/videos", {}, long_video, {"Content-Type": "text/plain"}, 415),
        ("path traversal in a file name", "GET", "/v1/videos/" + "0" * 32 + "/files/..%2F..%2Fetc%2Fpasswd", {},
         b"", {}, 404),
        ("not a job id", "GET", "/v1/videos/..%2F..%2Ftmp", {}, b"", {}, 404),
        ("missing token", "POST", "/v1/crops", {}, npy(ok_crop), {**npy_h, "Authorization": None}, 401),
        ("wrong token", "POST", "/v1/crops", {}, npy(ok_crop), {**npy_h, "Authorization": "Bearer " + "x" * 36},
         401),
    ]


def test_hostile_requests_get_4xx_json_within_a_second_then_a_good_answer(server, client, engine, golden_crops_8,
                                                                          tmp_path):
    import httpx

    cases = hostile_requests(tmp_path)
    assert len(cases) >= 15
    failures = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for case, method, path, params, body, headers, expected in cases:
            headers = {"Authorization": f"Bearer {TOKEN}", **headers}
            headers = {k: v for k, v in headers.items() if v is not None}
            t0 = time.perf_counter()
            r = http.request(method, path, params=params, content=body, headers=headers)
            took = time.perf_counter() - t0
            try:
                message = r.json()["error"]["message"]
            except Exception:   # not our JSON error
                message = None
            if r.status_code != expected or message is None or took > 1.0:
                failures.append((case, r.status_code, expected, round(took, 2), r.text[:120]))
    assert not failures, failures
    got, want = client.predict(golden_crops_8[:2]), engine.predict(golden_crops_8[:2])
    assert compare({k: got[k] for k in OUTPUTS}, {k: want[k] for k in OUTPUTS}, "fp32").passed
    assert client.health()["status"] == "ok"
