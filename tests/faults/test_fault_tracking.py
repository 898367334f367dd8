"""The MLflow tracking store becomes unreachable in the middle of a real pipeline run: the run finishes with
the same outputs, warns once, and the lineage is still complete in the artifact store's ref.json files."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["orchestration_fixtures", "faultkit"]

from faultkit import fingerprint, invoke, summary, write_config  # noqa: E402
from orchestration_fixtures import REPO  # noqa: E402,F401 - sets PREFECT_HOME before prefect is imported

CLIENT_CALLS = ("create_run", "log_batch", "log_inputs", "log_artifact", "set_terminated", "get_run",
                "get_experiment_by_name", "create_experiment")


def _stages(node: dict[str, Any]) -> set[str]:
    return {node["stage"]} | {s for child in node["inputs"] for s in _stages(child)}


def test_tracking_store_lost_mid_run(fault_data: Path, inprocess_reference: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """MLflow answers for the parent run and the first three stage runs, then every call fails with a
    connection error: exit 0, exactly one warning line, outputs equal to an undisturbed run, and
    ``ddflow lineage`` walks from the report back to ingest from ref.json alone."""
    from mlflow import MlflowClient

    import tasks.runtime.tracking

    monkeypatch.setattr(tasks.runtime.tracking, "_WARNED", set())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs_created = {"n": 0}

    def flaky(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if runs_created["n"] >= 4:
                raise ConnectionError("connection refused (tracking server went away)")
            runs_created["n"] += name == "create_run"
            return real(self, *args, **kwargs)
        return call

    for name in CLIENT_CALLS:
        monkeypatch.setattr(MlflowClient, name, flaky(name, getattr(MlflowClient, name)))
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "tracked.yaml", fault_data, tracking=True)
    with caplog.at_level(logging.WARNING, logger="ddflow.tracking"):
        done = invoke("run", str(cfg), "--root", str(root))
    assert done.exit_code == 0, done.output[-3000:]
    warnings = [r.getMessage() for r in caplog.records if r.name == "ddflow.tracking"]
    assert len(warnings) == 1 and "unavailable" in warnings[0] and "ref.json" in warnings[0], warnings
    assert fingerprint(root) == fingerprint(inprocess_reference)

    db = sqlite3.connect(root / "mlflow.db")
    try:
        assert db.execute("select count(*) from runs").fetchone()[0] == 4
    finally:
        db.close()
    shown = invoke("lineage", summary(root)["report"], "--root", str(root), "--json")
    assert shown.exit_code == 0, shown.output
    tree = json.loads(shown.output)
    assert _stages(tree) == {"report", "evaluate", "evaluate_round", "distill", "baseline",
                                  "baseline_round", "ingest"}
    assert tree["problem"] is None
