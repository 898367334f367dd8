"""Progress of long stages: one facility, three outputs.

A stage calls ``ctx.progress(done, total, loss=...)`` (:meth:`tasks.runtime.stage.StageContext.progress`)
from the callbacks ddcore's loops already take (distillation ``log``, training ``progress``); ddcore itself
knows nothing of this module. Each update goes to

* a **log line** on the stage's logger (Prefect's run logger inside a task, so also the flow-run page and
  any worker's output) at most every ``DDFLOW_PROGRESS_SECONDS`` seconds (default 15) and at the end:
  ``distill dm ipc10: 60/150 iterations (40%), loss 0.0123, 24s elapsed, ETA 36s``;
* a **Prefect progress artifact** on the task run (the flow-run page's *Artifacts* tab shows a bar), when
  running inside a Prefect task and an API is reachable (best effort: never fails a stage);
* a **live bar** on the terminal, when the CLI installed one with :func:`set_display` (``ddflow run`` on a
  TTY; stages in other processes, e.g. Ray workers, log lines only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

Display = Callable[[str, int, int, str], None]
"""``display(label, done, total, text)``; ``done == total`` ends the bar."""

_DISPLAY: list[Display] = []
_LOCK = threading.Lock()


def set_display(display: Display | None) -> None:
    """Install (or remove, ``None``) the live display of this process."""
    with _LOCK:
        _DISPLAY.clear()
        if display is not None:
            _DISPLAY.append(display)


def interval_seconds() -> float:
    """Seconds between two log lines of one stage (``DDFLOW_PROGRESS_SECONDS``, default 15; 0 = every update)."""
    try:
        return max(0.0, float(os.environ.get("DDFLOW_PROGRESS_SECONDS", "15")))
    except ValueError:
        return 15.0


def format_seconds(s: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_text(done: int, total: int, unit: str, metrics: Mapping[str, Any], elapsed: float) -> str:
    """``60/150 iterations (40%), loss 0.0123, 24s elapsed, ETA 36s`` (ETA from the mean rate so far)."""
    pct = 100.0 * done / total if total else 100.0
    parts = [f"{done}/{total} {unit} ({pct:.0f}%)"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    parts.append(f"{format_seconds(elapsed)} elapsed")
    if 0 < done < total:
        parts.append(f"ETA {format_seconds(elapsed * (total - done) / done)}")
    return ", ".join(parts)


class StageProgress:
    """Progress of one stage execution (see the module docstring). Thread-safe; cheap to call often."""

    def __init__(self, label: str, logger: logging.Logger | logging.LoggerAdapter, *,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None) -> None:
        self.label, self.logger, self.clock = label, logger, clock
        self.started = clock() if started is None else started  # on ``clock``'s scale
        self._last_log: float | None = None
        self._last_artifact: float | None = None
        self._artifact_id: Any = None
        self._artifact_failed = False
        self._lock = threading.Lock()

    def update(self, done: int, total: int, unit: str = "steps", **metrics: Any) -> None:
        """``done`` of ``total`` units finished (``metrics``: the latest loss etc.)."""
        now = self.clock()
        finished = total > 0 and done >= total
        text = progress_text(done, total, unit, metrics, now - self.started)
        with self._lock:
            due = self._last_log is None or finished or now - self._last_log >= interval_seconds()
            if due:
                self._last_log = now
            artifact_due = self._last_artifact is None or finished or now - self._last_artifact >= 5.0
            if artifact_due:
                self._last_artifact = now
        if due:
            self.logger.info("%s: %s", self.label, text)
        if artifact_due:
            self._prefect_artifact(100.0 * done / total if total else 100.0)
        for display in list(_DISPLAY):
            with contextlib.suppress(Exception):  # a display must never fail a stage
                display(self.label, done, total, text)

    def _prefect_artifact(self, pct: float) -> None:
        if self._artifact_failed:
            return
        if "prefect" not in sys.modules:  # never imports Prefect itself
            return
        try:
            from prefect.context import TaskRunContext

            if TaskRunContext.get() is None:
                return
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self._artifact_id is None:
                self._artifact_id = create_progress_artifact(progress=pct, description=self.label)
            else:
                update_progress_artifact(self._artifact_id, pct)
        except Exception:  # noqa: BLE001 - no API, an old server: log lines still report progress
            self._artifact_failed = True
