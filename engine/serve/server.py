"""`emoengine serve` as a function: Ray (local unless an address is given, as `batch` does), Ray Serve's HTTP
proxy on host:port, and three deployments: the gateway (FastAPI ingress), the EmoNet replicas, the video jobs.

`start_server` returns once /healthz answers 200; `Server.close()` shuts Serve down (replicas drain their
in-flight requests, up to GRACEFUL_S) and stops the Ray it started, so no Ray process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from emoengine.engine.serve.limits import Limits
from emoengine.errors import RunFailure, UserInputError, first_line

log = logging.getLogger("emoengine.serve")
SERVE_HINT = 'emoengine serve needs Ray Serve: pip install "emoengine[serve]"'
APP_NAME = "emoengine"
GRACEFUL_S = 20.0        # a stopping replica waits this long for its in-flight requests
READY_TIMEOUT_S = 600.0  # replicas load EmoNet (and export it from a .pth the first time)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEALTH_CHECK_PERIOD_S = 5.0   # a hung replica is replaced within this + health_check_timeout_s; a dead one at once
# Ray's and Serve's own background work, slowed for the local Ray that `serve` starts (the environment wins; a
# cluster keeps its own): idle, the server spent 153-193 ms of CPU a second on its control loop (10 Hz), metrics
# export (10 Hz per replica) and Ray's metrics agent, and 114-129 ms with these (two alternating runs each). On a
# small machine that time is taken from EmoNet, whose intra-op threads then wait for the one preempted.
QUIET_LOCAL_RAY = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
                   "RAY_enable_metrics_collection": "0"}
# one 256x256 RGB crop is 192 KiB, over Ray's 100 KiB limit for arguments passed inline: each /v1/crops call then
# went through the object store (raylet 3.7 ms of CPU a request, measured; 0-1.2 ms inline, AMD EPYC 2026-12-07)
LOCAL_RAY_CONFIG = {"max_direct_call_object_size": 1 << 20}


@dataclass
class ServeConfig:
    engine_args: dict                      # emoengine.Engine(**engine_args) in every replica
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch: int = 32
    batch_wait_ms: float = 10.0
    ray_address: str | None = None
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_jobs: int = 4
    keep_hours: float = 24.0
    jobs_dir: str | None = None            # default: a temporary folder removed at close
    cpus_per_replica: float | None = None  # Ray CPUs each EmoNet replica reserves (default: a share)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"


def require_serve() -> None:
    try:
        import fastapi  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError:
        raise UserInputError(SERVE_HINT) from None


def check_bind(cfg: ServeConfig) -> None:
    """Safe by default: a non-loopback host needs a token; a port already taken is one line, not a Ray error."""
    if cfg.host not in LOOPBACK and cfg.token is None:
        raise UserInputError(f"host {cfg.host} is reachable from other machines: give token_file (a bearer token "
                             "clients must send), or bind to 127.0.0.1")
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            raise UserInputError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None


def build_app(cfg: ServeConfig, jobs_dir: str, cpus: float):
    """The Serve application: gateway -> (EmoNet replicas, video jobs)."""
    from ray import serve

    from emoengine.engine.serve.gateway import make_ingress
    from emoengine.engine.serve.jobs import VideoJobs
    from emoengine.engine.serve.replica import EmoNetReplica

    def deployment(body, name: str, replicas: int, cpus_each: float, max_ongoing: int):
        return serve.deployment(body, name=name, num_replicas=replicas, ray_actor_options={"num_cpus": cpus_each},
                                max_ongoing_requests=max_ongoing, graceful_shutdown_timeout_s=GRACEFUL_S,
                                graceful_shutdown_wait_loop_s=0.5, max_constructor_retry_count=2,
                                health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=30.0)

    replica = deployment(EmoNetReplica, "emonet", cfg.replicas, cpus, max(64, 4 * cfg.max_batch)).bind(
        {**cfg.engine_args, "max_batch": cfg.max_batch}, cfg.max_batch, cfg.batch_wait_ms)
    jobs = deployment(VideoJobs, "videos", 1, 0.1, 64).bind(
        cfg.engine_args, jobs_dir, cfg.limits, cfg.max_jobs, cfg.keep_hours)
    gateway = deployment(make_ingress(), "gateway", 1, 0.1, 1024)
    return gateway.bind(replica, jobs, cfg.limits, cfg.token)


class Server:
    """A running `emoengine serve`; `close()` (or leaving `with`) stops all it started (safe to call twice)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg, self.url = cfg, cfg.url
        self._ray_started = False
        self._jobs_tmp: tempfile.TemporaryDirectory | None = None
        self._serving = False

    def start(self) -> Server:
        import ray
        from ray import serve

        from emoengine.engine.batch.ray_driver import start_ray

        cfg = self.cfg
        if cfg.ray_address is None and not ray.is_initialized():
            for name, value in QUIET_LOCAL_RAY.items():
                os.environ.setdefault(name, value)
        self._ray_started, info = start_ray(cfg.ray_address, quiet=True, local_config=LOCAL_RAY_CONFIG)
        try:
            total = ray.cluster_resources().get("CPU", 1.0)
            cpus = cfg.cpus_per_replica or round(min(1.0, max(total - 0.3, 0.2) / cfg.replicas), 2)
            jobs_dir = cfg.jobs_dir
            if jobs_dir is None:
                self._jobs_tmp = tempfile.TemporaryDirectory(prefix="emoengine-serve-jobs-")
                jobs_dir = self._jobs_tmp.name
            serve.start(http_options={"host": cfg.host, "port": cfg.port})
            self._serving = True
            serve.run(build_app(cfg, jobs_dir, cpus), name=APP_NAME, route_prefix="/")
            wait_healthy(self.url, READY_TIMEOUT_S, self.cfg.token)
            log.info("serving on %s (Ray %s, %d replica(s), %.2f CPUs each)", self.url, info.get("address"),
                     cfg.replicas, cpus)
        except BaseException as e:
            self.close()
            if isinstance(e, (UserInputError, KeyboardInterrupt)):
                raise
            raise RunFailure(f"emoengine serve did not start: {type(e).__name__}: {first_line(e)}") from None
        return self

    def close(self) -> None:
        import ray
        from ray import serve

        if self._serving:
            self._serving = False
            with contextlib.suppress(Exception):
                serve.shutdown()
        if self._ray_started:
            self._ray_started = False
            ray.shutdown()
        if self._jobs_tmp is not None:
            self._jobs_tmp.cleanup()
            self._jobs_tmp = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_healthy(url: str, timeout_s: float, token: str | None = None) -> dict:
    """Poll /healthz until 200 (the replicas loaded EmoNet); a replica that cannot start fails the wait."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            if r.status == 200:
                return json.loads(r.read())
        status = serve.status().applications.get(APP_NAME)
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            raise RunFailure(f"the EmoNet replicas failed to start: {first_line(RuntimeError(status.message))}")
        time.sleep(0.5)
    raise RunFailure(f"no healthy answer from {url}/healthz within {timeout_s:.0f} s")


def start_server(cfg: ServeConfig) -> Server:
    require_serve()
    check_bind(cfg)
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")   # Serve's own INFO lines go to its log files
    return Server(cfg).start()


def prepare_engine(engine_args: dict) -> None:
    """Open (and close) the Engine here once, before Ray starts: a bad option, a missing file or a tap the model
    lacks is the Engine's own one-line error (exit 2), and a .pth is exported once for every replica to reuse."""
    require_serve()
    from emoengine.api import Engine

    with Engine(**engine_args):
        pass
