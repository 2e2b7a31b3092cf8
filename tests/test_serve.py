"""`emoengine serve` (issue 22): the golden weights behind HTTP on a real local Ray Serve, reached with the real
`emoengine.Client` over loopback. One server for the module (a Ray start costs tens of seconds on 2 cores),
bound to 0.0.0.0 with a bearer token, so the token rules are tested on the bind that needs them.

Same answers: /v1/crops and /v1/faces against `Engine` on the same weights, judged by the one comparator
(emoengine.compare, fp32 row); /v1/videos' predictions.csv against `emoengine run`'s. Dynamic batching: eight
concurrent one-crop requests form batches of more than one crop (/metrics). Bad input: a matrix of hostile
requests, each a 4xx JSON error within a second, then a good request answered.
"""

from __future__ import annotations

import json
import os
import socket
import threading
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
    assert np.abs(got["conv1"] - want["conv1"]).max() <= 1e-3 * np.abs(want["conv1"]).max()


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
            assert np.abs(g.taps[name] - tap).max() <= 1e-3 * max(np.abs(tap).max(), 1e-6)


def test_health_docs_and_metrics(client, server):
    health = client.health()
    assert health["status"] == "ok" and health["classes"][1] == "Happy"
    status, body, _ = client.request("GET", "/openapi.json")
    assert {"/v1/faces", "/v1/crops", "/v1/videos", "/healthz", "/metrics"} <= set(json.loads(body)["paths"])
    text = client.request("GET", "/metrics")[1].decode()
    for name in ("emoengine_requests_total", "emoengine_request_seconds_bucket", "emoengine_batch_size_bucket",
                 "emoengine_queue_depth"):
        assert name in text
