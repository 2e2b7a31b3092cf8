"""`emoengine batch` on Ray Data: one item per video through an actor pool of `VideoWorker`s, then aggregation.

Without an address a local Ray is started on this machine (and stopped at the end); with one, the driver joins
that cluster. Inputs and --out must then be paths every node sees (a shared file system), and emoengine must be
installed on every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from emoengine.engine.batch.videos import (
    BATCH_SUMMARY,
    BatchItem,
    VideoWorker,
    batch_summary,
    previous_failures,
    video_row,
    write_predictions_parquet,
)
from emoengine.engine.outputs.report.index import write_batch_index
from emoengine.engine.run.resume import complete_summary
from emoengine.errors import RunFailure, UserInputError, first_line

log = logging.getLogger(__name__)

CLUSTER_HINT = 'emoengine batch needs Ray Data and pyarrow: pip install "emoengine[cluster]"'


def require_ray() -> None:
    """One line (exit 2) when the [cluster] extra is missing."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserInputError(CLUSTER_HINT) from None


def start_ray(address: str | None, quiet: bool, local_config: dict | None = None) -> tuple[bool, dict]:
    """Join `address`, reuse a Ray this process already runs, or start a local one (`local_config`: more of
    Ray's system config for it; a cluster keeps its own). Returns (started, info)."""
    import ray

    if ray.is_initialized():
        return False, {"address": "already initialized in this process"}
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # noqa: BLE001  ConnectionError and Ray's own kinds: one line, the real cause
            cause = e.__cause__ or e
            raise UserInputError(f"cannot join the Ray cluster at {address}: {type(cause).__name__}: "
                                 f"{first_line(cause)}") from None
        return True, {"address": address}
    cpus = os.cpu_count() or 1
    # the local Ray is told its CPUs outright (a container's cgroup limit can differ from what Ray guesses), and
    # its workers run at the priority of the command that started them: Ray's default (nice 15) let any other
    # process take their cores; measured with a busy neighbour, EmoNet in an actor took 1.7-2x the wall time per
    # crop it took in the driver at nice 15, and the same at nice 0 (`serve`'s replicas, `batch`'s workers)
    ray.init(num_cpus=cpus, _system_config={"worker_niceness": 0, **(local_config or {})}, **kwargs)
    return True, {"address": "local", "cpus": cpus}


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A plain host:port that nothing answers on fails in seconds (ray.init would retry for minutes)."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot join the Ray cluster at {address}: {e}") from None


def plan(items: list[BatchItem], out_dir: Path, retry_failed: bool) -> tuple[list[dict], list[BatchItem]]:
    """Rows for videos already settled (complete outputs; unchanged inputs that failed as bad input before)
    and the items still to run."""
    settled, todo = [], []
    failures = {} if retry_failed else previous_failures(out_dir)
    for item in items:
        video_dir = out_dir / item.name
        if (s := complete_summary(video_dir)) is not None:
            settled.append(video_row(item, "skipped", reason="outputs complete from an earlier run",
                                     wall_s=float(s.get("wall_s", 0.0)), frames=int(s.get("frames", 0)),
                                     faces=int(s.get("faces", 0))))
            continue
        old = failures.get(item.name)
        try:
            same_file = old is not None and old.get("input") == item.path and old.get("stat") == item.stat_key()
        except OSError:
            same_file = False
        if same_file and old is not None:
            settled.append(dict(old))   # still the same bad file: not retried (--retry-failed does)
        else:
            todo.append(item)
    return settled, todo


def default_workers(address: str | None, gpus_per_worker: float) -> int:
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    cpus = resources.get("CPU", os.cpu_count() or 1)
    return max(1, int(cpus // 4)) if address else max(1, int(cpus // 2))


def run_on_ray(todo: list[BatchItem], out_dir: Path, template, model_args: dict, *, workers: int,
               cpus_per_worker: float, gpus_per_worker: float, retries: int, threads: int | None,
               on_row) -> list[dict]:
    """Each video through the actor pool; `on_row(row)` as each finishes. Videos lost with their worker
    after `retries` retries come back as failed rows."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = -1        # a block lost for good (its worker kept dying) is reported, not fatal
    if hasattr(ctx, "print_on_execution_start"):        # newer Ray Data only
        ctx.print_on_execution_start = False
    if hasattr(ctx, "issue_detectors_config"):          # its advice (memory per worker...) drowns our lines
        ctx.issue_detectors_config.detectors = []
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items([{"path": i.path, "name": i.name} for i in todo], override_num_blocks=len(todo))
    # bounded retries (Ray Data's actor-pool default is -1, forever): a video whose worker process dies is rerun
    # at most `retries` times; a dead worker is restarted as long as some video still has an attempt left, so
    # one video that kills every worker it touches cannot take the others down with it
    remote: dict[str, Any] = dict(max_restarts=(retries + 1) * len(todo), max_task_retries=retries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Ray >= 2.5x flags plain ray_remote_args as deprecated; still honoured
        ds = ds.map_batches(
            VideoWorker, batch_size=1, batch_format="numpy",
            # one video at a time per actor: an item is only a path (nothing to prefetch), and a video queued
            # behind one that kills the process would be lost with it
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs=dict(template=template, model_args=model_args, out_dir=str(out_dir),
                                       threads=threads),
            **remote)
    rows: dict[str, dict] = {}
    try:
        for r in ds.iter_rows():
            row = {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            rows[row["video"]] = row
            on_row(row)
    except Exception as e:  # noqa: BLE001  whatever Ray raises, the videos it finished are kept
        reason = f"Ray: {type(e).__name__}: {first_line(e)}"
    else:
        reason = f"lost: the worker process running it died {retries + 1} time(s)"
    for item in todo:
        if item.name not in rows:
            rows[item.name] = video_row(item, "failed", reason=reason, kind="run", exit_code=1)
            on_row(rows[item.name])
    return [rows[i.name] for i in todo]


def run_batch(items: list[BatchItem], out_dir: Path, template, model_args: dict, *, address: str | None = None,
              workers: int | None = None, cpus_per_worker: float | None = None, gpus_per_worker: float = 0.0,
              retries: int = 3, retry_failed: bool = False, quiet: bool = False) -> dict:
    """The whole batch: plan (resume), Ray, aggregation. Returns batch_summary.json's content."""
    require_ray()
    from emoengine.engine.outputs.writers import write_json

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from None
    t0 = time.perf_counter()
    settled, todo = plan(items, out_dir, retry_failed)
    say = (lambda msg: None) if quiet else log.info
    say(f"batch: {len(items)} videos, {len(settled)} already settled, {len(todo)} to run")
    ray_info: dict = {"address": None}
    ran: list[dict] = []
    if todo:
        import ray

        started, ray_info = start_ray(address, quiet)
        try:
            n = workers or default_workers(address, gpus_per_worker)
            total_cpus = ray.cluster_resources().get("CPU", 1.0)
            if cpus_per_worker is None:
                # on one machine leave a CPU's worth for Ray Data's own tasks, or the pool starves them
                cpus_per_worker = 1.0 if address else round(min(1.0, max(total_cpus - 1, 0.5) / n), 2)
            threads = None if address else max(1, int((os.cpu_count() or 1) // n))
            ray_info.update(workers=n, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                            retries=retries)

            def report(row: dict) -> None:
                if row["status"] == "done":
                    say(f"batch: {row['video']}: {row['frames']} frames, {row['faces']} faces in "
                        f"{row['wall_s']:.1f} s")
                else:
                    say(f"batch: {row['video']}: failed: {row['reason']}")

            ran = run_on_ray(todo, out_dir, template, model_args, workers=n, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, retries=retries, threads=threads, on_row=report)
        finally:
            if started:
                ray.shutdown()
    for row in ran:
        if row["status"] == "failed" and row.get("kind") == "input":
            with contextlib.suppress(OSError):
                row["stat"] = BatchItem(row["input"], row["video"]).stat_key()
    by_name = {r["video"]: r for r in settled + ran}
    rows = [by_name[i.name] for i in items]
    write_predictions_parquet(out_dir, [r["video"] for r in rows if r["status"] in ("done", "skipped")])
    summary = batch_summary(rows, time.perf_counter() - t0, ray_info)
    write_json(out_dir / BATCH_SUMMARY, summary)
    if template.report:
        write_batch_index(out_dir, summary)
    if ran and all(r["status"] == "failed" and r.get("kind") == "setup" for r in ran):
        error = UserInputError if ran[0]["exit_code"] == 2 else RunFailure
        raise error(ran[0]["reason"])
    return summary
