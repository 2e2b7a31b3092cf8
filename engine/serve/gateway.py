"""The HTTP face of `emoengine serve`: a FastAPI app (OpenAPI at /docs) as the Ray Serve ingress deployment.

The gateway checks every request (token, content type, limits: engine.serve.limits) before it reaches an EmoNet
replica, answers every failure as `{"error": {"status", "message"}}` JSON, and turns a replica that died under
a request into `503` with Retry-After (Ray Serve restarts the replica). It holds no model, so a hostile request
cannot take EmoNet down with it, and it keeps the metrics (engine.serve.metrics).
"""

# no `from __future__ import annotations`: FastAPI reads these annotations in the gateway process, where Ray
# rebuilt the routes by value and string annotations would name nothing

import asyncio
import base64
import email.parser
import logging
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from emoengine.engine.serve import limits as checks
from emoengine.engine.serve.limits import ApiError, Limits
from emoengine.engine.serve.metrics import Metrics
from emoengine.errors import EmoengineError, UserInputError, first_line

log = logging.getLogger("emoengine.serve.gateway")
REPLICA_TIMEOUT_S = 120.0   # a replica call past this is answered 504 (none hangs)
HEALTH_TIMEOUT_S = 5.0
RETRY_AFTER_S = 2

def error_response(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def encode_array(a: np.ndarray) -> dict:
    """A tap as float16 bytes in base64 (a 64×128×128 tap as JSON numbers would be megabytes of text)."""
    a = np.ascontiguousarray(a, np.float16)
    return {"dtype": "float16", "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def parse_taps(text: str | None, available) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    missing = [n for n in names if n not in available]
    if missing:
        raise ApiError(422, f"tap(s) {', '.join(missing)} not served; this server has: {', '.join(available)}")
    return names


def _replica_error(e: BaseException) -> ApiError:
    """What a failed replica call means to the client: its own bad input (422), the replica gone (503)."""
    import ray.exceptions as rex
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(e, UserInputError):
        return ApiError(422, first_line(e))
    if isinstance(e, (rex.RayActorError, rex.ActorUnavailableError, DeploymentUnavailableError,
                      BackPressureError)):
        return ApiError(503, f"the EmoNet replica is unavailable ({type(e).__name__}); retry shortly")
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return ApiError(504, f"no answer from the EmoNet replica within {REPLICA_TIMEOUT_S:.0f} s")
    if isinstance(e, EmoengineError):
        return ApiError(500, first_line(e))
    return ApiError(500, f"{type(e).__name__}: {first_line(e)}")


def image_from(body: bytes, content_type: str) -> bytes:
    """The image of a JPEG/PNG body, or of the first file part of a multipart/form-data body."""
    kind = checks.media_type(content_type)
    if kind in checks.IMAGE_TYPES:
        return body
    if kind == "multipart/form-data":
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
        for part in message.walk() if message.is_multipart() else ():
            if part.get_content_type() in checks.IMAGE_TYPES or part.get_filename():
                data = part.get_payload(decode=True)
                if isinstance(data, bytes) and data:
                    return data
        raise ApiError(422, "no image part in the multipart body")
    raise ApiError(415, f"send image/jpeg, image/png or multipart/form-data, not {kind or 'no content type'}")


class Gateway:
    """Ingress deployment body (wrapped by serve.ingress(app) in engine.serve.server)."""

    def __init__(self, replica, jobs, limits: Limits, token: str | None) -> None:
        self.replica, self.jobs = replica, jobs
        self.limits, self.token = limits, token
        self.metrics = Metrics()
        self._info: dict | None = None

    async def _call(self, method: str, *args):
        try:
            return await asyncio.wait_for(getattr(self.replica, method).remote(*args), REPLICA_TIMEOUT_S)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001  a dead or failing replica: 503, never a hang
            raise _replica_error(e) from None

    async def _served(self) -> dict:
        info = self._info
        if info is None:
            info = self._info = await self._call("info")
        return info

    async def _answer(self, endpoint: str, request: Request, work, auth: bool = True) -> Response:
        """Token, then `work()`; its ApiError (or any error) as JSON; latency and status into the metrics."""
        t0 = time.perf_counter()
        self.metrics.in_flight += 1
        try:
            if auth and not checks.token_ok(request.headers.get("authorization"), self.token):
                raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            response = await work()
        except ApiError as e:
            response = error_response(e.status, e.message)
        except Exception as e:   # a bug of ours must still be a JSON answer, and the gateway lives on
            log.exception("unexpected error on %s", endpoint)
            response = error_response(500, f"{type(e).__name__}: {first_line(e)}")
        finally:
            self.metrics.in_flight -= 1
        self.metrics.observe(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    async def _body(self, request: Request, limit: int) -> bytes:
        checks.check_length(request.headers.get("content-length"), limit)
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise ApiError(413, f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return checks.check_body(b"".join(chunks), limit)


def make_ingress():
    """The gateway's FastAPI app and its Serve ingress class, made afresh: Ray ships this class to the gateway's
    process by value, with the app whose routes serve.ingress turned into methods (a module-level app would be
    imported there again, without that)."""
    from ray import serve

    app = FastAPI(title="emoengine serve", version="1",
                  description="EmoNet facial emotion (expression, valence, arousal, landmarks, feature maps) over "
                              "HTTP. Errors are {\"error\": {\"status\", \"message\"}}.")

    install_error_handlers(app)

    @serve.ingress(app)
    class Routes(health_routes(app), face_routes(app), video_routes(app)):
        """Every route; Serve finds each through the class it was written in (its MRO)."""

    return Routes


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own validation and HTTP errors in our {\"error\": ...} shape."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))


def health_routes(app: FastAPI) -> type:
    """/healthz and /metrics, as a Gateway mixin."""

    class HealthRoutes(Gateway):
        # -- health and metrics ----------------------------------------------------------------------------------
        @app.get("/healthz", summary="200 once EmoNet is loaded and a request would be answered")
        async def healthz(self, request: Request) -> Response:
            async def work():
                try:
                    info = await asyncio.wait_for(self.replica.info.remote(), HEALTH_TIMEOUT_S)
                except Exception as e:  # noqa: BLE001  any failure to answer means not ready
                    raise ApiError(503, f"not ready: {type(e).__name__}") from None
                self._info = info
                return JSONResponse({"status": "ok", "classes": info["classes"], "taps": info["taps"],
                                     "backend": info["backend"], "replica_pid": info["pid"]})
            return await self._answer("healthz", request, work, auth=False)

        @app.get("/metrics", summary="Prometheus text: requests, latencies, batch sizes formed, queue depth")
        async def metrics_text(self, request: Request) -> Response:
            async def work():
                return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4")
            return await self._answer("metrics", request, work)

    return HealthRoutes


def face_routes(app: FastAPI) -> type:
    """/v1/crops and /v1/faces, as a Gateway mixin."""

    class FaceRoutes(Gateway):
        # -- crops and faces -------------------------------------------------------------------------------------
        @app.post("/v1/crops", summary="EmoNet on an .npy body of uint8 (N, 256, 256, 3) RGB crops")
        async def crops(self, request: Request, taps: str | None = None) -> Response:
            async def work():
                if checks.media_type(request.headers.get("content-type")) != checks.NPY_TYPE:
                    raise ApiError(415, f"send the crops as {checks.NPY_TYPE} (an .npy file's bytes)")
                crops = checks.parse_npy(await self._body(request, self.limits.upload_bytes), self.limits)
                names = parse_taps(taps, (await self._served())["full_taps"])
                answer = await self._call("crops", crops, names)
                self.metrics.batches(answer["batches"])
                self.metrics.crops += len(crops)
                out = answer["outputs"]
                body = {k: np.asarray(out[k]).tolist() for k in ("expression", "probabilities", "valence",
                                                                   "arousal", "landmarks")}
                body["taps"] = {name: encode_array(out[name]) for name in names}
                return JSONResponse({"classes": (await self._served())["classes"], **body,
                                     "batch_sizes": [b["size"] for b in answer["batches"]]})
            return await self._answer("crops", request, work)

        @app.post("/v1/faces", summary="Detect every face of one JPEG/PNG image and run EmoNet on each")
        async def faces(self, request: Request, taps: str | None = None) -> Response:
            async def work():
                body = await self._body(request, self.limits.upload_bytes)
                image = image_from(body, request.headers.get("content-type") or "")
                checks.check_image(image, self.limits)
                names = parse_taps(taps, (await self._served())["taps"])
                answer = await self._call("faces", image, names)
                self.metrics.batches(answer["batches"])
                self.metrics.faces += len(answer["faces"])
                faces = [{**{k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                             for k, v in f.items() if k != "taps"},
                          "taps": {n: encode_array(m) for n, m in f["taps"].items()}} for f in answer["faces"]]
                return JSONResponse({"classes": (await self._served())["classes"], "width": answer["width"],
                                     "height": answer["height"], "faces": faces})
            return await self._answer("faces", request, work)

    return FaceRoutes


def video_routes(app: FastAPI) -> type:
    """/v1/videos' jobs and files, as a Gateway mixin."""

    class VideoRoutes(Gateway):
        # -- video jobs ------------------------------------------------------------------------------------------
        async def _jobs(self, method: str, *args):
            try:
                return await asyncio.wait_for(getattr(self.jobs, method).remote(*args), REPLICA_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001  a dead or failing job worker: 503
                raise _replica_error(e) from None

        @app.post("/v1/videos", status_code=202, summary="Upload a video: 202 and a job id (run's pipeline on it)")
        async def submit_video(self, request: Request, name: str = "upload.mp4") -> Response:
            async def work():
                kind = checks.media_type(request.headers.get("content-type"))
                if kind not in checks.VIDEO_TYPES:
                    raise ApiError(415, f"send the video as one of {', '.join(checks.VIDEO_TYPES)}, not {kind or 'none'}")
                body = await self._body(request, self.limits.video_upload_bytes)
                job = await self._jobs("submit", body, name)
                if "error" in job:
                    raise ApiError(job["error"]["status"], job["error"]["message"])
                return JSONResponse(job, status_code=202)
            return await self._answer("videos", request, work)

        @app.get("/v1/videos/{job_id}", summary="A job's state, frames done, frames/s, error, files")
        async def video_job(self, request: Request, job_id: str) -> Response:
            async def work():
                job = await self._jobs("status", job_id)
                if job is None:
                    raise ApiError(404, f"no such job: {job_id[:64]!r}")
                return JSONResponse(job)
            return await self._answer("videos", request, work)

        @app.get("/v1/videos/{job_id}/files/{name}", summary="One result file of a finished job")
        async def video_file(self, request: Request, job_id: str, name: str) -> Response:
            async def work():
                found = await self._jobs("file", job_id, checks.check_file_name(name))
                if found is None:
                    raise ApiError(404, f"no file {name!r} in job {job_id[:64]!r}")
                data, media = found
                return Response(data, media_type=media)
            return await self._answer("videos", request, work)

    return VideoRoutes
