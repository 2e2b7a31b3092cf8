"""`emoengine serve` as users start it (the real console command, a local Ray of its own): a replica killed under
load comes back and no request hangs or is lost without an answer; SIGTERM drains and leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="emoengine serve needs Ray Serve (the [serve] extra)")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow

import emoengine
from emoengine.errors import RunFailure

READY_S = 300
REQUEST_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(golden_pth_8, tmp_path_factory):
    """(process, url): `emoengine serve` on the golden weights, waited for until it prints its URL."""
    work = tmp_path_factory.mktemp("serve-cli")
    port = free_port()
    env = {**os.environ, "EMOENGINE_MODELS": str(work / "models")}
    proc = subprocess.Popen([sys.executable, "-m", "emoengine", "serve", "--weights", str(golden_pth_8),
                             "--port", str(port), "--max-batch", "8"], cwd=work, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + READY_S
    while not any("serving on" in line for line in lines):
        assert proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.5)
    yield proc, f"http://127.0.0.1:{port}", lines
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def test_a_killed_replica_is_restarted_and_no_request_hangs(served, golden_crops_8):
    proc, url, _ = served
    client = emoengine.Client(url, timeout_s=REQUEST_TIMEOUT_S, retries=8)
    old_pid = client.health()["replica_pid"]
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.predict(golden_crops_8[:1])
                outcomes.append(("ok", time.perf_counter() - t0))
            except RunFailure as e:   # a 503 the retries did not outlast: an answer, not a hang
                outcomes.append((str(e), time.perf_counter() - t0))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(old_pid, signal.SIGKILL)
    time.sleep(20)
    stop.set()
    for t in threads:
        t.join(REQUEST_TIMEOUT_S * 10)
    assert not any(t.is_alive() for t in threads)
    new = client.health()
    assert new["status"] == "ok" and new["replica_pid"] != old_pid
    bad = [o for o in outcomes if o[0] != "ok" and " 503: " not in o[0]]
    assert not bad, bad                                   # every failure is a 503, none a 500 or a drop
    assert max(took for _, took in outcomes) < REQUEST_TIMEOUT_S * 10   # retries included: none hung
    assert client.predict(golden_crops_8[:1])["probabilities"].shape == (1, 8)
    assert sum(o[0] == "ok" for o in outcomes) > 4


def videos_worker(root_pid: int):
    """The process of the video-jobs replica, below the `emoengine serve` command."""
    for child in psutil.Process(root_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::ServeReplica:emoengine:videos"):
                return child
    raise AssertionError("no video-jobs replica process")


def poll_job(client, job_id: str, until, timeout_s: float) -> dict:
    """The job's status once `until(job)`; a 503 while the replica restarts is waited out, not a failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(RunFailure):
            job = client.job(job_id)
            if until(job):
                return job
        assert time.monotonic() < deadline, f"job {job_id} not there within {timeout_s} s"
        time.sleep(0.2)


def test_a_video_job_whose_worker_dies_is_retried_once(served, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_serve_tests", Path(__file__).with_name("test_serve.py"))
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)   # its write_clip: one clip writer for both files
    write_clip = helpers.write_clip
    demo = Path(__file__).resolve().parents[1] / ".." / "shared" / "media" / "demo.mp4"
    if not demo.is_file():
        pytest.skip(f"no demo clip at {demo}")
    proc, url, _ = served
    client = emoengine.Client(url, timeout_s=REQUEST_TIMEOUT_S, retries=8)
    job_id = client.submit(write_clip(demo, tmp_path / "clip.mp4", 30))
    poll_job(client, job_id, lambda j: j["state"] != "queued", 120)
    worker = videos_worker(proc.pid)
    worker.kill()
    worker.wait(30)
    job = poll_job(client, job_id, lambda j: j["state"] not in ("queued", "running"), READY_S)
    assert job["state"] == "done", job
    assert job["attempts"] == 2 and "died" in job["note"] and job["frames"] == 30, job


def test_a_job_whose_worker_died_twice_is_failed_with_the_reason(tmp_path):
    """What a restarted jobs replica does with a job that was running when its process died a second time."""
    from emoengine.engine.serve.jobs import VideoJobs
    from emoengine.engine.serve.limits import Limits

    job_id = "0123456789abcdef" * 2
    (tmp_path / job_id).mkdir()
    (tmp_path / job_id / "job.json").write_text(json.dumps({"id": job_id, "state": "running", "attempts": 2,
                                                            "input": "input.mp4", "files": []}))
    jobs = VideoJobs({}, str(tmp_path), Limits())
    job = jobs.status(job_id)
    assert job is not None and job["state"] == "failed" and "died" in job["error"], job
    assert json.loads((tmp_path / job_id / "job.json").read_text())["state"] == "failed"   # on disk too


def test_sigterm_drains_and_leaves_no_ray_process_behind(served):
    proc, url, lines = served
    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) > 3   # Ray's own processes (gcs_server, raylet, workers) hang below the command
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 130, "".join(lines)
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in family if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, [psutil.Process(pid).cmdline()[:2] for pid in alive]
    assert any("draining" in line for line in lines)
