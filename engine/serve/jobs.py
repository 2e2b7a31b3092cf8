"""`/v1/videos`: a bounded queue of video jobs, each `run`'s pipeline on an uploaded video (a Ray Serve deployment
of one replica, with its own `emoengine.Engine`).

A job's state lives on disk (`<root>/<id>/job.json`), so a replica that dies and is restarted finds its jobs
again: one that was running when the process died is retried once, then marked failed with the reason. Finished
jobs' files are removed after `keep_hours`. Clients name only a job id (server-made) and a file the job listed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import queue
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from emoengine.engine.serve.limits import Limits
from emoengine.errors import UserInputError, first_line

log = logging.getLogger("emoengine.serve.jobs")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
ACTIVE = ("queued", "running")
SAVE_EVERY_S = 1.0


def _error(status: int, message: str) -> dict:
    return {"error": {"status": status, "message": message}}


def probe_video(path: Path, limits: Limits) -> dict | None:
    """None when the file is a video within the limits, else the error: unreadable (422) or too long (413).
    The same opener `run` uses decides what a video is; its header's duration and frame count are checked
    before a frame is decoded."""
    from emoengine.engine.sources.opener import open_video_file

    try:
        source = open_video_file(path)
    except UserInputError as e:
        return _error(422, first_line(e).replace(str(path), "the upload"))
    with source:
        frames = source.frame_count or 0
        seconds = frames / source.fps if source.fps else 0.0
    with contextlib.suppress(Exception):
        import av

        with av.open(str(path)) as c:
            if c.duration is not None:
                seconds = max(seconds, c.duration / 1_000_000)
            stream = c.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = max(seconds, float(stream.duration * stream.time_base))
    if seconds > limits.video_s:
        return _error(413, f"video of {seconds:.0f} s is over the limit of {limits.video_s:.0f} s")
    if frames > limits.video_frames:
        return _error(413, f"video of {frames} frames is over the limit of {limits.video_frames}")
    return None


class VideoJobs:
    """Deployment body. `engine_args`: emoengine.Engine's; `root`: where jobs live (made if missing)."""

    def __init__(self, engine_args: dict, root: str, limits: Limits, max_jobs: int = 4,
                 keep_hours: float = 24.0) -> None:
        self.engine_args, self.limits = engine_args, limits
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_jobs, self.keep_s = max_jobs, keep_hours * 3600
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str] = queue.Queue()
        self._engine = None
        self._recover()
        threading.Thread(target=self._work, name="emoengine-serve-jobs", daemon=True).start()

    # -- state on disk -----------------------------------------------------------------------------------------
    def _save(self, job: dict) -> None:
        path = self.root / job["id"] / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job))
        tmp.replace(path)

    def _recover(self) -> None:
        """Jobs of an earlier process of this replica: finished ones are kept; one that was running is retried
        once (its process died under it), then failed with that reason; queued ones are queued again."""
        for path in sorted(self.root.glob("*/job.json"), key=lambda p: p.stat().st_mtime):
            try:
                job = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if job.get("state") == "running":
                job["attempts"] = job.get("attempts", 1)
                if job["attempts"] >= 2:
                    job.update(state="failed", error="the worker process died while running it, twice",
                               finished_at=time.time())
                else:
                    job.update(state="queued", note="retried: the worker process died while running it")
            self.jobs[job["id"]] = job
            self._save(job)
            if job["state"] == "queued":
                self._queue.put(job["id"])

    def _expire(self) -> None:
        now = time.time()
        for job_id, job in list(self.jobs.items()):
            if job["state"] not in ACTIVE and now - job.get("finished_at", now) > self.keep_s:
                shutil.rmtree(self.root / job_id, ignore_errors=True)
                self.jobs.pop(job_id, None)

    # -- the API the gateway calls ----------------------------------------------------------------------------
    def submit(self, data: bytes, name: str) -> dict:
        with self._lock:
            self._expire()
            if sum(j["state"] in ACTIVE for j in self.jobs.values()) >= self.max_jobs:
                return _error(429, f"the job queue is full ({self.max_jobs} jobs); retry later")
        job_id = uuid.uuid4().hex
        suffix = Path(name).suffix.lower()
        folder = self.root / job_id
        folder.mkdir()
        video = folder / f"input{suffix if suffix in VIDEO_SUFFIXES else '.mp4'}"
        video.write_bytes(data)
        problem = probe_video(video, self.limits)
        if problem is not None:
            shutil.rmtree(folder, ignore_errors=True)
            return problem
        job = {"id": job_id, "state": "queued", "name": Path(name).name[:128], "frames_done": 0,
               "frames": None, "frames_per_s": 0.0, "error": None, "files": [], "attempts": 0,
               "submitted_at": time.time(), "input": video.name}
        with self._lock:
            self.jobs[job_id] = job
            self._save(job)
        self._queue.put(job_id)
        return {k: job[k] for k in ("id", "state")}

    def status(self, job_id: str) -> dict | None:
        if not JOB_ID.match(job_id):
            return None
        with self._lock:
            self._expire()
            job = self.jobs.get(job_id)
            return None if job is None else {k: v for k, v in job.items() if k != "input"}

    def file(self, job_id: str, name: str):
        """(bytes, media type) of a file the finished job listed; None otherwise."""
        job = self.status(job_id)
        if job is None or job["state"] != "done" or name not in job["files"]:
            return None
        path = self.root / job_id / "out" / name
        if not path.is_file():
            return None
        return path.read_bytes(), mimetypes.guess_type(name)[0] or "application/octet-stream"

    # -- the worker ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            job = self.jobs.get(job_id)
            if job is None or job["state"] != "queued":
                continue
            with self._lock:
                job.update(state="running", started_at=time.time(), attempts=job.get("attempts", 0) + 1)
                self._save(job)
            try:
                summary = self._run(job)
                job.update(state="done", files=sorted(summary.get("files", [])), frames=summary.get("frames"),
                           frames_per_s=summary.get("frames_per_s"))
            except Exception as e:  # noqa: BLE001  the job fails with its reason; the worker goes on
                log.warning("job %s failed: %s", job_id, first_line(e))
                job.update(state="failed", error=first_line(e))
            job["finished_at"] = time.time()
            with contextlib.suppress(OSError):
                (self.root / job_id / job["input"]).unlink()
            with self._lock:
                self._save(job)

    def _run(self, job: dict) -> dict:
        from emoengine.api import Engine
        from emoengine.engine.run.driver import run_pipeline

        if self._engine is None:
            self._engine = Engine(**self.engine_args)
        folder = self.root / job["id"]
        t0, last = time.perf_counter(), [0.0]

        def progress(record) -> None:
            job["frames_done"] = record.index + 1
            now = time.perf_counter()
            job["frames_per_s"] = round(job["frames_done"] / max(now - t0, 1e-6), 2)
            if now - last[0] > SAVE_EVERY_S:
                last[0] = now
                with self._lock:
                    self._save(job)

        cfg = self._engine.run_config(folder / job["input"], folder / "out")
        summary = run_pipeline(cfg, *self._engine.parts(), observe=progress)
        written = folder / "out" / "summary.json"   # as committed: with its `files`
        return json.loads(written.read_text()) if written.is_file() else summary
