"""Peak resident memory of this process, as `summary.json` and the benchmarks report it."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB.

    Linux: VmHWM of /proc/self/status, the peak of this program's own memory. Not getrusage's ru_maxrss: Linux
    carries that across exec, so a run started by a big parent (a notebook, pytest) would report the parent's
    size at fork time. Elsewhere: ru_maxrss (bytes on macOS, KiB on the other Unixes)."""
    import resource

    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**10, 1)   # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def child_peak_rss_mb() -> float:
    """A child process's peak, less the shared memory it maps from the run (RssShmem, now): the parent made and
    filled those slots, so its own peak counts them already. Summed with the parent's, a run's pages of shared
    memory count once; shared libraries still count in every process (an upper bound, as before)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssShmem:"):
                return round(max(0.0, peak_rss_mb() - int(line.split()[1]) / 2**10), 1)
    return peak_rss_mb()
