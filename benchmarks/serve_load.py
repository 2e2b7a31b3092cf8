"""`emoengine serve` under load over loopback, against the model alone and `Engine` in the same sitting.

    python -m emoengine.benchmarks.serve_load                      # golden weights, ~3 minutes on 2 cores
    python -m emoengine.benchmarks.serve_load --seconds 10 --requests 500 --json /tmp/quick.json

The golden checkpoint (../shared/golden) is exported with `emoengine export` and served with `--model` (ort).
In order: the model-only `emoengine bench` (ort, batches 1, 2, 4, 8; its own process), `Engine` on a 720p
one-face image in a loop (decode, detect, EmoNet: the pipeline a replica runs, without HTTP or the batcher),
then one local server (`start_server`, as `emoengine serve` does) and three scenarios, each bounded by time or
count: (a) `/v1/crops`, 8 clients sending one crop each; (b) `/v1/faces` with the 720p image, 1 client (the
Engine's loop, image for image) and 4; (c) 2,000 one-crop requests from 16 clients, with the server's RSS after
the first and the last thousand. Then the model-only bench again; the ratios divide by the best faces/s of both.

Per scenario: requests/s, faces/s, latency p50/p95/p99 (client side, over loopback), the mean batch size the
server formed (its /metrics), errors (any answer but 200), lost (no answer at all), and the server's memory: the
sum of VmRSS and of VmHWM (each process's peak) over every process below this one (Ray's and the workers').
The machine is shared: the 1-min load average is recorded before and after; re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from emoengine.benchmarks.bench import _load_average, machine_facts, save_report
from emoengine.benchmarks.process_tree import server_cpu, server_memory
from emoengine.benchmarks.shared_data import shared_path
from emoengine.errors import EmoengineError

GOLDEN = shared_path("golden")
SIZE_720P = (1280, 720)
TARGETS = {"crops_vs_model_only": 0.8, "faces_vs_engine": 0.7, "rss_growth_mb": 50.0}


# -- inputs ------------------------------------------------------------------------------------------------------
def golden_pth(work: Path) -> Path:
    """The golden 8-class weights in the upstream file format (golden README)."""
    import torch

    w = np.load(GOLDEN / "emonet8.weights.npz")
    state = {"module." + k: torch.from_numpy(w[k]).float() if w[k].dtype == np.float16 else torch.from_numpy(w[k])
             for k in w.files}
    torch.save(state, work / "emonet8_golden.pth")
    return work / "emonet8_golden.pth"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "emoengine", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"emoengine {args[0]} failed:\n{result.stderr[-2000:]}")
    return result


def golden_crops() -> np.ndarray:
    with np.load(GOLDEN / "emonet8.outputs.npz") as z:
        return z["images_rgb"]


def face_image_720p() -> bytes:
    """A 1280x720 JPEG with one real face: insightface's Tom_Hanks_54745.png, upscaled to 400 px, centred."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise SystemExit("needs insightface (its wheel carries the face photo)")
    face = Image.open(Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png").convert("RGB")
    canvas = Image.new("RGB", SIZE_720P, (118, 112, 104))
    canvas.paste(face.resize((400, 400), Image.Resampling.BICUBIC), ((SIZE_720P[0] - 400) // 2, (SIZE_720P[1] - 400) // 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# -- the model alone and the Engine --------------------------------------------------------------------------------
def model_only(pth: Path, work: Path, seconds: float) -> dict:
    """`emoengine bench --backends ort` in its own process: faces/s per batch."""
    out = work / f"bench-{time.monotonic_ns()}.json"
    cli("bench", "--weights", str(pth), "--backends", "ort", "--batch", "1,2,4,8", "--parity-inputs", "8",
        "--min-time", str(seconds), "--json", str(out), cwd=work)
    rows = json.loads(out.read_text())["results"]
    return {"faces_per_s": {str(r["batch"]): round(r["faces_per_s"], 2) for r in rows if r["status"] == "measured"},
            "load_average_1m": _load_average()}


def engine_loop(onnx: Path, image: bytes, seconds: float) -> dict:
    """`Engine` on the image, one after another: decode, then the replica's own pipeline (detect, crop,
    EmoNet) on the Engine's parts, with no HTTP and no batcher."""
    import emoengine
    from emoengine.engine.model.tapset import tap_specs_for_run
    from emoengine.engine.serve.replica import image_faces
    from emoengine.engine.sources.images import decode_image

    with emoengine.Engine(model=str(onnx), backend="ort", detector="mtcnn") as engine:
        model, detector = engine.parts()
        specs = tap_specs_for_run(engine.template, model)

        def once() -> int:
            rgb = decode_image(np.frombuffer(image, np.uint8), "the image")
            return len(image_faces(rgb, model, detector, engine.template, specs, 32))

        faces = once()
        if faces != 1:
            raise SystemExit(f"the 720p image should hold one face; the Engine found {faces}")
        times, cpu0 = [], time.process_time()
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
    return {"images_per_s": round(len(times) / sum(times), 2), "images": len(times),
            "cpu_ms_per_image": round(1000 * cpu / len(times), 1),
            "latency_ms": percentiles(times), "load_average_1m": _load_average()}


def model_cpu(onnx: Path, seconds: float) -> dict:
    """EmoNet alone in this process on the golden crop, batch 1 then 8: faces/s and CPU ms per crop (CPU time
    is less disturbed than wall time when others share the machine)."""
    from emoengine.engine.model.emonet_model import open_emonet

    crop, out = golden_crops()[:1], {}
    model = open_emonet(model=str(onnx), backend="ort")
    try:
        for batch in (1, 8):
            crops = np.repeat(crop, batch, axis=0)
            model.predict(crops)
            n, w0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - w0 < seconds / 2:
                model.predict(crops)
                n += batch
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            out[str(batch)] = {"faces_per_s": round(n / wall, 2), "cpu_ms_per_crop": round(1000 * cpu / n, 1)}
    finally:
        model.close()
    return {**out, "load_average_1m": _load_average()}


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    return {f"p{q}": round(float(np.percentile(seconds, q)) * 1000, 1) for q in (50, 95, 99)}


# -- load ---------------------------------------------------------------------------------------------------------
class Load:
    """`clients` threads posting `body` to `path` until `seconds` pass or `requests` were sent in all."""

    def __init__(self, client, path: str, body: bytes, content_type: str, clients: int,
                 seconds: float | None = None, requests: int | None = None, on_done=None) -> None:
        self.client, self.path, self.body, self.content_type = client, path, body, content_type
        self.clients, self.seconds, self.requests, self.on_done = clients, seconds, requests, on_done
        self.lock = threading.Lock()
        self.sent = self.ok = self.errors = self.lost = 0
        self.latencies: list[float] = []
        self.first_error: str | None = None

    def _next(self, t_end: float) -> bool:
        with self.lock:
            if (self.requests is not None and self.sent >= self.requests) or time.perf_counter() >= t_end:
                return False
            self.sent += 1
            return True

    def _client(self, t_end: float) -> None:
        import urllib.error

        while self._next(t_end):
            t0 = time.perf_counter()
            try:
                self.client.request("POST", self.path, self.body, self.content_type, retry=False)
                outcome = "ok"
            except EmoengineError as e:   # an answer, but not 200 (UserInputError, RunFailure)
                outcome = "error" if " 503: cannot reach" not in str(e) else "lost"
                self.first_error = self.first_error or str(e)[:200]
            except (OSError, urllib.error.URLError) as e:   # no answer at all (timeout, reset)
                outcome, self.first_error = "lost", self.first_error or str(e)[:200]
            took = time.perf_counter() - t0
            with self.lock:
                self.latencies.append(took)
                setattr(self, outcome, getattr(self, outcome) + 1)
                done = self.ok + self.errors + self.lost
            if self.on_done:
                self.on_done(done)

    def run(self) -> dict:
        before, cpu_before = self.client.metrics(), server_cpu()
        t_end = time.perf_counter() + (self.seconds if self.seconds is not None else 3600.0)
        threads = [threading.Thread(target=self._client, args=(t_end,)) for _ in range(self.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        after, cpu_after = self.client.metrics(), server_cpu()
        cpu_ms = {k: round(1000 * (v - cpu_before.get(k, 0.0)) / max(self.sent, 1), 1) for k, v in cpu_after.items()
                  if v - cpu_before.get(k, 0.0) > 0.005 * wall}
        batches = after["emoengine_batch_size_count"] - before.get("emoengine_batch_size_count", 0)
        crops = after["emoengine_batch_size_sum"] - before.get("emoengine_batch_size_sum", 0)
        model_s = after["emoengine_model_seconds_sum"] - before.get("emoengine_model_seconds_sum", 0)
        return {"clients": self.clients, "requests": self.sent, "answered": self.ok + self.errors,
                "errors": self.errors, "lost": self.lost + self.sent - (self.ok + self.errors + self.lost),
                "first_error": self.first_error, "wall_s": round(wall, 2),
                "requests_per_s": round(self.ok / wall, 2), "latency_ms": percentiles(self.latencies),
                "emonet_calls": int(batches), "mean_batch": round(crops / batches, 2) if batches else None,
                "model_busy": round(model_s / wall, 3),   # share of the wall time the replica's EmoNet ran
                "model_ms_per_crop": round(1000 * model_s / crops, 1) if crops else None,
                "cpu_ms_per_request": dict(sorted(cpu_ms.items(), key=lambda kv: -kv[1])),
                "load_average_1m": _load_average()}


def held_load(client, body: bytes, requests: int, clients: int) -> dict:
    """Scenario (c): `requests` one-crop requests from `clients`; the server's RSS after the first and the
    last thousand (or half, for fewer than 2,000)."""
    mark = min(1000, requests // 2)
    samples: dict[str, dict] = {}

    def on_done(done: int) -> None:
        if done == mark and "first" not in samples:
            samples["first"] = server_memory()

    result = Load(client, "/v1/crops", body, "application/x-npy", clients, requests=requests,
                  on_done=on_done).run()
    samples["last"] = server_memory()
    first = samples.get("first", samples["last"])
    result.update(faces_per_s=result["requests_per_s"], memory_after_first=first, memory_after_last=samples["last"],
                  rss_growth_mb=round(samples["last"]["rss_mb"] - first["rss_mb"], 1), requests_per_mark=mark)
    return result


# -- the sitting ----------------------------------------------------------------------------------------------------
def serve_scenarios(onnx: Path, image: bytes, args) -> dict:
    """One local server (as `emoengine serve --model ONNX` starts it) and the three scenarios on it."""
    import socket

    import emoengine
    from emoengine.engine.serve.server import ServeConfig, start_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig({"model": str(onnx), "backend": "ort", "detector": "mtcnn"}, port=port,
                      max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    t0 = time.perf_counter()
    with start_server(cfg) as server:
        started_s = round(time.perf_counter() - t0, 1)
        client = emoengine.Client(server.url, timeout_s=60, retries=0)
        crop = npy_bytes(golden_crops()[:1])
        Load(client, "/v1/crops", crop, "application/x-npy", 8, seconds=2).run()   # warm-up, not reported
        Load(client, "/v1/faces", image, "image/jpeg", 1, seconds=2).run()
        out = {"start_s": started_s, "memory_idle": server_memory()}
        out["crops_8_clients"] = Load(client, "/v1/crops", crop, "application/x-npy", 8, seconds=args.seconds).run()
        out["crops_8_clients"]["faces_per_s"] = out["crops_8_clients"]["requests_per_s"]
        for clients in (1, 4):
            row = Load(client, "/v1/faces", image, "image/jpeg", clients, seconds=args.seconds).run()
            out[f"faces_720p_{clients}_client{'s' if clients > 1 else ''}"] = {**row,
                                                                                 "faces_per_s": row["requests_per_s"]}
        out["held_16_clients"] = held_load(client, crop, args.requests, 16)
        out["memory_end"] = server_memory()
    return out


def verdicts(report: dict) -> dict:
    best = max(f for run in report["model_only"] for f in run["faces_per_s"].values())
    s = report["serve"]
    crops, faces, held = s["crops_8_clients"], s["faces_720p_1_client"], s["held_16_clients"]
    engine = report["engine_720p"]["images_per_s"]
    return {
        "model_only_best_faces_per_s": best,
        "crops_vs_model_only": round(crops["faces_per_s"] / best, 3),
        "crops_batches_over_1": bool(crops["mean_batch"] and crops["mean_batch"] > 1),
        "faces_vs_engine": round(faces["faces_per_s"] / engine, 3),
        "faces_4_clients_vs_engine": round(s["faces_720p_4_clients"]["faces_per_s"] / engine, 3),
        # load-robust: EmoNet's own CPU per crop over the whole server's (all its processes) per request
        "crops_cpu_efficiency": round(report["model_cpu"]["8"]["cpu_ms_per_crop"]
                                      / sum(crops["cpu_ms_per_request"].values()), 3),
        "faces_cpu_efficiency": round(report["engine_720p"]["cpu_ms_per_image"]
                                      / sum(faces["cpu_ms_per_request"].values()), 3),
        "held_errors": held["errors"], "held_lost": held["lost"], "held_rss_growth_mb": held["rss_growth_mb"],
        "targets": TARGETS,
        "met": {"crops": crops["faces_per_s"] / best >= TARGETS["crops_vs_model_only"]
                and bool(crops["mean_batch"] and crops["mean_batch"] > 1),
                "faces": faces["faces_per_s"] / engine >= TARGETS["faces_vs_engine"],
                "held": held["errors"] == 0 and held["lost"] == 0
                and held["rss_growth_mb"] < TARGETS["rss_growth_mb"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed scenario")
    parser.add_argument("--requests", type=int, default=2000, help="requests of the held-load scenario")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/serve-load-<machine>-<date>.json")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    report = {"machine": machine_facts(), "date": started.isoformat(timespec="seconds"),
              "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "weights": "golden emonet8 (../shared/golden), exported to ONNX, backend ort",
                         "image": "Tom_Hanks_54745.png (insightface) upscaled to 400 px on a 1280x720 canvas, JPEG",
                         "crops": "golden crop 0, one per request", "latency": "client side, over loopback"}}
    with tempfile.TemporaryDirectory(prefix="emoengine-serve-load-") as tmp:
        work = Path(tmp)
        os.environ["EMOENGINE_MODELS"] = str(work / "models")   # the export cache, for Ray's workers as well
        pth = golden_pth(work)
        onnx = work / "emonet8_golden.onnx"
        cli("export", "--weights", str(pth), "--output", str(onnx), cwd=work)
        image = face_image_720p()
        print("model-only bench ...", flush=True)
        report["model_only"] = [model_only(pth, work, 2.0)]
        print("Engine on the 720p image ...", flush=True)
        report["engine_720p"] = engine_loop(onnx, image, args.seconds)
        report["model_cpu"] = model_cpu(onnx, args.seconds)
        print("serve scenarios ...", flush=True)
        report["serve"] = serve_scenarios(onnx, image, args)
        print("model-only bench again ...", flush=True)
        report["model_only"].append(model_only(pth, work, 2.0))
    report["duration_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    report["verdicts"] = verdicts(report)
    print(json.dumps(report["verdicts"], indent=1))
    save_report(report, args.json, "serve-load-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
