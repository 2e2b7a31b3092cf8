"""`emoengine.Client`: `emoengine serve` from Python, with the Engine's result types where they fit.

    client = emoengine.Client("http://127.0.0.1:8000", token=None)
    out = client.predict(crops)          # like Engine.predict: expression, probabilities, valence, arousal, ...
    faces = client.faces("group.jpg")    # StreamFace per face: box, id, score, expression, probabilities, ...
    result = client.analyze("clip.mp4", out="results/")   # run's files downloaded; an Analysis

Standard library only (urllib): the client needs nothing the server needs. A 4xx answer is a UserInputError (a
ValueError) with the server's one-line message; a 503 (a replica restarting) is retried `retries` times after
its Retry-After; anything else is a RunFailure.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from emoengine.errors import RunFailure, UserInputError

__all__ = ["Client"]


def decode_array(spec: dict) -> np.ndarray:
    """A tap as the server sends it (float16 bytes, base64) -> float32."""
    raw = np.frombuffer(base64.b64decode(spec["data"]), np.dtype(spec["dtype"]))
    return raw.reshape(spec["shape"]).astype(np.float32)


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout_s: float = 120.0,
                 retries: int = 3) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.timeout_s, self.retries = timeout_s, retries

    # -- HTTP ------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                params: dict | None = None, retry: bool = True) -> tuple[int, bytes, str]:
        """(status, body, content type) of a 2xx answer; errors raised as the module docstring says."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1 if retry else 1):
            req = urllib.request.Request(f"{self.url}{path}{'?' + query if query else ''}", data=body,
                                         headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return r.status, r.read(), r.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, message = e.code, _message(e)
                wait = float(e.headers.get("Retry-After") or 1)
            except (urllib.error.URLError, ConnectionError) as e:   # the gateway itself is restarting
                status, message, wait = 503, f"cannot reach {self.url}: {getattr(e, 'reason', e)}", 1.0
            if status != 503 or attempt == self.retries or not retry:
                break
            time.sleep(min(wait, 10.0))
        error = UserInputError if 400 <= status < 500 else RunFailure
        raise error(f"{method} {path}: {status}: {message}")

    def _json(self, *args, **kwargs) -> dict:
        return json.loads(self.request(*args, **kwargs)[1])

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def metrics(self) -> dict[str, float]:
        from emoengine.engine.serve.metrics import parse_metrics

        return parse_metrics(self.request("GET", "/metrics")[1].decode())

    # -- EmoNet ----------------------------------------------------------------------------------------------
    def predict(self, crops: np.ndarray, taps=None) -> dict[str, np.ndarray]:
        """Engine.predict over HTTP: (N, 256, 256, 3) uint8 RGB crops -> expression (logits), probabilities,
        valence, arousal, landmarks, float32, and each tap asked for (full, float16 on the wire)."""
        crops = np.ascontiguousarray(crops)
        buf = io.BytesIO()
        np.save(buf, crops, allow_pickle=False)
        answer = self._json("POST", "/v1/crops", buf.getvalue(), "application/x-npy", {"taps": _taps(taps)})
        out = {k: np.asarray(answer[k], np.float32) for k in ("expression", "probabilities", "valence",
                                                               "arousal", "landmarks")}
        out.update({name: decode_array(spec) for name, spec in answer.get("taps", {}).items()})
        return out

    def faces(self, image, taps=None) -> list:
        """Every face of one image (a path, JPEG/PNG bytes, or an RGB uint8 array) as api_results.StreamFace:
        box, id, score, expression, probabilities, valence, arousal, landmarks, taps (channel means asked)."""
        from emoengine.api_results import StreamFace

        data, kind = _image_bytes(image)
        answer = self._json("POST", "/v1/faces", data, kind, {"taps": _taps(taps)})
        return [StreamFace(box=np.asarray(f["box"], np.float32), id=f["id"], score=f["score"],
                           expression=f["expression"], probabilities=np.asarray(f["probabilities"], np.float32),
                           valence=f["valence"], arousal=f["arousal"],
                           landmarks=np.asarray(f["landmarks"], np.float32),
                           taps={n: decode_array(s) for n, s in f["taps"].items()}) for f in answer["faces"]]

    # -- videos ----------------------------------------------------------------------------------------------
    def submit(self, video) -> str:
        path = Path(video)
        answer = self._json("POST", "/v1/videos", path.read_bytes(), "application/octet-stream",
                            {"name": path.name}, retry=False)
        return answer["id"]

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/videos/{job_id}")

    def analyze(self, video, out, progress=None, poll_s: float = 0.5, timeout_s: float | None = None):
        """Upload `video`, wait for its job (`progress(job)` at each poll), download its files into `out`;
        returns an Analysis of that folder (its `taps` empty: the maps are in the files)."""
        from emoengine.api_results import Analysis

        job_id = self.submit(video)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (job := self.job(job_id))["state"] in ("queued", "running"):
            if progress is not None:
                progress(job)
            if deadline is not None and time.monotonic() > deadline:
                raise RunFailure(f"job {job_id} not done within {timeout_s:.0f} s (state {job['state']})")
            time.sleep(poll_s)
        if job["state"] != "done":
            raise RunFailure(f"job {job_id} failed: {job.get('error')}")
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name in job["files"]:
            (folder / name).write_bytes(self.request("GET", f"/v1/videos/{job_id}/files/{name}")[1])
        summary = json.loads((folder / "summary.json").read_text()) if "summary.json" in job["files"] else {}
        return Analysis(folder, summary, {}, [t["name"] for t in summary.get("taps", [])])


def _taps(taps) -> str | None:
    if taps is None:
        return None
    return taps if isinstance(taps, str) else ",".join(taps)


def _message(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read())["error"]["message"]
    except Exception:  # noqa: BLE001  not our JSON (a proxy's own answer)
        return e.reason or "error"


def _image_bytes(image) -> tuple[bytes, str]:
    if isinstance(image, np.ndarray):
        import cv2

        ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_RGB2BGR))
        return png.tobytes(), "image/png"
    data = bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
    return data, "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
