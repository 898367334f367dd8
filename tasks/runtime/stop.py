"""Stopping a run's running stages when the run itself is stopped (SIGTERM, Ctrl-C, a Prefect cancel).

Stage tasks run in worker threads that a signal cannot interrupt, and Prefect's thread runner waits for them
when the flow unwinds: without a stop, a ``kill`` (a scheduler's, a worker's cancel) left ``ddflow run`` alive
until the running stage ended, hours later at ImageNet scale. When the flow unwinds with a ``BaseException``
that is not an ``Exception`` (Prefect's ``TerminationSignal``, ``KeyboardInterrupt``), the pipeline run calls
:func:`request_stop`; every stage checks :func:`check_stop` whenever it logs metrics or progress (each logged
iteration, epoch or batch) and ends with :class:`StageStopped`, keeping its checkpoint, so the next run resumes.
The flag is per process (Ray workers are stopped by Ray).
"""

from __future__ import annotations

import threading

from tasks.runtime.stage_errors import StageError

_STOP = threading.Event()
_REASON = {"text": ""}


class StageStopped(StageError):
    """A running stage ended early because its run was stopped (never retried: not transient)."""


def request_stop(reason: str) -> None:
    """Ask every running stage of this process to stop at its next progress report."""
    _REASON["text"] = reason
    _STOP.set()


def clear_stop() -> None:
    """Forget an earlier stop request (a new run starts)."""
    _STOP.clear()


def check_stop(stage: str, key: str) -> None:
    """Raise :class:`StageStopped` when a stop was requested.

    Raises:
        StageStopped: names the stage, the reason and that the checkpoint is kept for the next run.
    """
    if _STOP.is_set():
        raise StageStopped(f"stage '{stage}' stopped: {_REASON['text']} (key {key}; its checkpoint is kept: run "
                           "again to resume)", stage=stage, key=key)
