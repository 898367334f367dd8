"""Peak resident memory of the stages a process runs (Linux ``/proc``; ``getrusage`` elsewhere).

The kernel keeps one high-water mark per process (``VmHWM``). :class:`PeakMemory` resets it (``clear_refs``) when
a stage starts while no other stage runs in the process, and reads it when the stage ends; so a stage run alone
gets its own peak, and stages that overlap in one process (the thread runner) share the peak of their window.
Memory of worker processes a stage starts (DataLoader or ingest workers) is not included. The reset also moves
what outside tools read (``ru_maxrss``, ``/usr/bin/time``): after a run they show the peak since the last
stage started, not the run's; the run's peak is the largest stage peak in ``summary.json``.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
from pathlib import Path

_LOCK = threading.Lock()
_ACTIVE = 0


def _read_hwm_kb() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return None


def peak_rss_mb() -> float:
    """The process's resident-memory high-water mark in MiB (since start or the last reset)."""
    kb = _read_hwm_kb()
    if kb is None:  # no /proc: ru_maxrss is KiB on Linux, bytes on macOS, never reset
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return round(kb / 1024, 1)


class PeakMemory:
    """Context manager measuring a stage's peak RSS: ``with PeakMemory() as m: ...; m.mb``."""

    mb: float = 0.0

    def __enter__(self) -> PeakMemory:
        global _ACTIVE
        with _LOCK:
            if _ACTIVE == 0:
                with contextlib.suppress(OSError):
                    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            _ACTIVE += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self.mb = peak_rss_mb()
        with _LOCK:
            _ACTIVE -= 1
