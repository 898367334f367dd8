"""The nested MLflow run of one stage execution (opened by :meth:`tasks.runtime.tracking.Tracker.start_stage`)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.runtime.mlflow_client import is_number
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.tracking import Tracker


class StageRun:
    """The nested MLflow run of one stage execution; every method is a no-op when tracking is off."""

    def __init__(self, tracker: Tracker, run_id: str | None) -> None:
        self.tracker, self.run_id = tracker, run_id
        self._pending: list[tuple[str, float, int]] = []
        self._lock = threading.Lock()

    def reference(self) -> dict[str, str]:
        """``{"uri", "run_id"}`` of this run for the output's ``ref.json`` (empty when untracked)."""
        if self.run_id is None or self.tracker.tracking_uri is None:
            return {}
        return {"uri": str(self.tracker.tracking_uri), "run_id": self.run_id}

    @property
    def active(self) -> bool:
        return self.run_id is not None and self.tracker.enabled

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Buffer numeric ``metrics`` at ``step``; flushed in batches of 500 and at the end."""
        if not self.active:
            return
        with self._lock:
            self._pending.extend((k, float(v), int(step)) for k, v in metrics.items() if is_number(v))
            flush = len(self._pending) >= 500
        if flush:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending and self.active:
            run_id = str(self.run_id)
            self.tracker._guard("logging metrics", lambda: self.tracker._log_batch(run_id, metrics=pending))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file (an image, a report) into the run's artifacts."""
        if self.active:
            run_id = str(self.run_id)
            self.tracker._guard("logging an artifact",
                                lambda: self.tracker.client().log_artifact(run_id, str(path), artifact_path))

    def finish(self, ref: ArtifactRef, metrics: Mapping[str, Any], *, ref_file: str | None = None,
               status: str | None = "computed") -> None:
        """Log the final metrics, the output tags (and ``ref.json``), and close the run as FINISHED."""
        self.flush()
        if not self.active:
            return
        run_id = str(self.run_id)
        tags = {"ddflow.output_digest": ref.sha256, "ddflow.output_uri": ref.uri, "ddflow.kind": ref.kind,
                **{f"result.{k}": v for k, v in metrics.items() if not is_number(v)}}
        if status:
            tags["ddflow.status"] = status
        final = [(k, float(v), 0) for k, v in metrics.items() if is_number(v)]

        def go() -> None:
            self.tracker._log_batch(run_id, tags=tags, metrics=final)
            if ref_file and Path(ref_file).is_file():
                self.tracker.client().log_artifact(run_id, ref_file, "ddflow")
            self.tracker.client().set_terminated(run_id, "FINISHED")

        self.tracker._guard("finishing a stage run", go)

    def fail(self, exc: BaseException) -> None:
        self.flush()
        if self.active:
            run_id = str(self.run_id)
            msg = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"

            def go() -> None:
                self.tracker._log_batch(run_id, tags={"ddflow.status": "failed", "ddflow.error": msg})
                self.tracker.client().set_terminated(run_id, "FAILED")

            self.tracker._guard("failing a stage run", go)
