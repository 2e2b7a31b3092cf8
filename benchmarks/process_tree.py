"""The processes a benchmark started, from /proc: their CPU seconds and memory, by name.

Ray's workers change their titles with the call they run, so a name is the actor's (`ray::ServeReplica:...`) or
the program's; figures are summed per name over every descendant of this process.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _status_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _title(pid: int) -> str:
    """A process's name: a Ray worker's actor (its title changes with the call it runs:
    `ray::ServeReplica:emoengine:gateway.handle_request`), else its program."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    return title.split(".")[0] if title.startswith("ray::") else Path(title).name[:40] or str(pid)


def server_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of each process this one started, by name, and of this process (the
    load's clients)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in [os.getpid(), *descendants(os.getpid())]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            name = "clients (this process)" if pid == os.getpid() else _title(pid)
        except (OSError, IndexError):
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def server_memory() -> dict:
    """MB summed over every process this one started (Ray's own and its workers: the server); the EmoNet and
    gateway replicas' own."""
    by_name: dict[str, tuple[int, int]] = {}
    pids = descendants(os.getpid())
    for pid in pids:
        rss, hwm = _status_kb(pid)
        with contextlib.suppress(OSError):
            name = _title(pid)
            old = by_name.get(name, (0, 0))
            by_name[name] = (old[0] + rss, old[1] + hwm)
    mine = {k.rsplit(":", 1)[-1]: round(v[0] / 1024, 1) for k, v in by_name.items() if "emoengine:" in k}
    return {"processes": len(pids), "rss_mb": round(sum(r for r, _ in by_name.values()) / 1024, 1),
            "peak_rss_mb": round(sum(h for _, h in by_name.values()) / 1024, 1), "replicas_rss_mb": mine}
