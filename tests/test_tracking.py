"""MLflow tracking of the toy flow: parent + nested runs, params, input digests; graceful degradation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import TOY_STAGES, ToyConfig, free_port, make_numbers, toy_flow  # noqa: E402

from flows.cli import app  # noqa: E402
from tasks.runtime.lineage import resolve_record  # noqa: E402
from tasks.runtime.refs import RefRecord  # noqa: E402
from tasks.runtime.stage import run_stage  # noqa: E402
from tasks.runtime.store import ArtifactStore  # noqa: E402
from tasks.runtime.tracking import Tracker  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite tracking store for the module (its first use creates the tables, ~9 s)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def tracking_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ddflow.tracking" and r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _fresh_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the 'warn once' state of a new process."""
    import tasks.runtime.tracking

    monkeypatch.setattr(tasks.runtime.tracking, "_WARNED", set())


def test_parent_and_nested_runs_with_lineage(tmp_path: Path, toy_env: Path, mlflow_uri: str) -> None:
    """One parent run per flow run and one nested run per stage; stage params hold the flattened config and
    its digest; each stage's inputs carry our sha256[:16] digest; outputs are tags; a cached re-run logs no
    nested run but links each reused stage from its parent run to the run that computed it; the experiment
    opens in MLflow's model-training view."""
    from mlflow import MlflowClient

    result = toy_flow(root=str(tmp_path), value=3, tracking_uri=mlflow_uri, experiment="toy-lineage")
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("toy-lineage")
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["ddflow.role"] == "pipeline" and parent.info.status == "FINISHED"
    assert "prefect.flow_run_id" in parent.data.tags
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {r.data.tags["ddflow.stage"]: r for r in children}
    assert set(by_stage) == set(TOY_STAGES) and all(r.info.status == "FINISHED" for r in children)
    double = by_stage["double"]
    ref = result["refs"]["double"]
    assert double.data.params["config_digest"] == ToyConfig(value=2).digest()
    assert double.data.params["value"] == "2" and double.data.params["stage_key"] == ref["key"]
    assert double.data.tags["ddflow.output_digest"] == ref["sha256"] and double.data.tags["ddflow.status"] == "computed"
    assert "prefect.task_run_id" in double.data.tags and "ddflow.code_version" in double.data.tags
    assert [m.step for m in client.get_metric_history(double.info.run_id, "x")] == [0, 1, 2]
    (inp,) = double.inputs.dataset_inputs
    make_ref = result["refs"]["make"]
    assert inp.dataset.digest == make_ref["sha256"][:16] and inp.dataset.name == f"make/{make_ref['key']}"
    assert json.loads(inp.dataset.source)["uri"] == make_ref["uri"]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "numbers"
    found = client.search_runs([exp.experiment_id], f"dataset.digest = '{make_ref['sha256'][:16]}'")
    assert [r.data.tags["ddflow.stage"] for r in found] == ["double"]
    artifacts = client.list_artifacts(double.info.run_id, "ddflow")
    assert [a.path for a in artifacts] == ["ddflow/ref.json"]

    rec = resolve_record(ArtifactStore(tmp_path), double.info.run_id, tracker=Tracker(mlflow_uri, "toy-lineage"))
    assert rec.ref.sha256 == ref["sha256"]
    assert rec.tracking == {"uri": mlflow_uri, "run_id": double.info.run_id}  # what a cached re-run links to
    res = CliRunner().invoke(app, ["lineage", double.info.run_id, "--root", str(tmp_path), "--tracking-uri",
                                   mlflow_uri, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["inputs"][0]["key"] == make_ref["key"]

    again = toy_flow(root=str(tmp_path), value=3, tracking_uri=mlflow_uri, experiment="toy-lineage")
    assert client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{again['parent_run_id']}'") == []
    tags = client.get_run(again["parent_run_id"]).data.tags
    links = {k: v for k, v in tags.items() if k.startswith("ddflow.cached.")}
    assert links == {f"ddflow.cached.{s}": by_stage[s].info.run_id for s in TOY_STAGES}
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize("kind", ["server_down", "not_writable"])
def test_unreachable_tracking_warns_once_and_flow_finishes(tmp_path: Path, toy_env: Path, kind: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable tracking store gives one warning line; the flow still completes and every stage's
    ref.json lineage is written."""
    uri = f"http://127.0.0.1:{free_port()}" if kind == "server_down" else "sqlite:////proc/ddflow-no/mlflow.db"
    with caplog.at_level(logging.WARNING, logger="ddflow.tracking"):
        result = toy_flow(root=str(tmp_path), value=2, tracking_uri=uri)
    assert result["outcomes"] == dict.fromkeys(TOY_STAGES, "completed") and result["parent_run_id"] is None
    (line,) = tracking_warnings(caplog)
    assert uri in line and "\n" not in line
    store = ArtifactStore(tmp_path)
    total = store.read_record("total", result["refs"]["total"]["key"])
    assert total.inputs["numbers"].stage == "double"


def test_tracking_failing_mid_run_degrades_to_no_op(tmp_path: Path, toy_env: Path, mlflow_uri: str,
                                                    caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """When the store starts failing after the run began, the tracker warns once, stops tracking, and the
    stage still publishes its output."""
    from mlflow import MlflowClient

    tracker = Tracker(mlflow_uri, "toy-midrun")
    assert tracker.start() and tracker.start_run("midrun")

    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    store = ArtifactStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ddflow.tracking"):
        ref = run_stage(store, "make", make_numbers, {}, ToyConfig(value=2), "features", tracker, device="cpu")
        run_stage(store, "make", make_numbers, {}, ToyConfig(value=3), "features", tracker, device="cpu")
        tracker.end_run()
    assert not tracker.enabled and len(tracking_warnings(caplog)) == 1
    assert "went away" in tracking_warnings(caplog)[0]
    assert RefRecord.from_json((Path(ref.uri) / "ref.json").read_text()).ref == ref


def test_default_tracking_uri_for_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a URI the tracker uses <root>/mlflow.db (artifacts under <root>/mlartifacts); $MLFLOW_TRACKING_URI
    wins; a remote store without a URI tracks nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = Tracker.for_store(ArtifactStore(tmp_path), "e")
    assert t.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and t.artifact_location.endswith("/mlartifacts")
    assert not Tracker.for_store(ArtifactStore("memory://x"), "e").enabled
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Tracker.for_store(ArtifactStore(tmp_path), "e").tracking_uri == "http://mlflow:5000"
