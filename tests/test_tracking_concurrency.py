"""MLflow tracking under the fan-out of a pipeline: no record is lost and no run is left RUNNING.

Real MLflow on a SQLite store in a temporary folder. The workload mirrors what the stage runtime does for
each stage (nested run, params, one input dataset shared by every stage, metrics in steps, output tags,
ref.json artifact, FINISHED), from 8 threads of one process and, at the same time, from a second process
(a Ray worker or a concurrent ``ddflow evaluate`` writing to the same store).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import REPO  # noqa: E402,F401 - sets PREFECT_HOME before prefect is imported

from ddcore.config import StageConfig  # noqa: E402
from tasks.runtime.mlflow_client import RetryingClient, is_transient  # noqa: E402
from tasks.runtime.refs import ArtifactRef  # noqa: E402
from tasks.runtime.store import ArtifactStore  # noqa: E402
from tasks.runtime.tracking import PARENT_TAG, Tracker  # noqa: E402

THREADS, STAGES_PER_THREAD, STEPS = 8, 4, 3
SHARED = ArtifactRef(uri="/data/ingest/abc", sha256="a" * 64, stage="ingest", key="0123abcd", kind="dataset")


class WorkConfig(StageConfig):
    worker: int
    stage: int


def _stage_ref(tag: str, worker: int, stage: int) -> ArtifactRef:
    digest = hashlib.sha256(f"{tag}/{worker}/{stage}".encode()).hexdigest()
    return ArtifactRef(uri=f"/out/{tag}/{worker}/{stage}", sha256=digest, stage="evaluate",
                       key=f"{worker:04d}{stage:04d}", kind="eval")


def fan_out(uri: str, experiment: str, parent: str, tag: str, ref_file: str) -> int:
    """THREADS x STAGES_PER_THREAD stage runs under ``parent``; returns the tracker's lost-record count."""
    tracker = Tracker(uri, experiment)
    tracker.parent_run_id = parent
    assert tracker.start()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            stages(worker)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def stages(worker: int) -> None:
        barrier.wait()
        for stage in range(STAGES_PER_THREAD):
            own = _stage_ref(tag + "-in", worker, stage)
            run = tracker.start_stage("evaluate", f"{worker:04d}{stage:04d}", WorkConfig(worker=worker, stage=stage),
                                      {"data": SHARED, "set": own, "again": SHARED}, kind="eval")
            for step in range(STEPS):
                run.log_metrics(step, {"acc": 0.1 * step, "loss": 1.0 / (step + 1)})
                run.flush()
            run.finish(_stage_ref(tag, worker, stage), {"acc_mean": 0.5, "note": "ok"}, ref_file=ref_file)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return tracker.lost


def _child(uri: str, experiment: str, parent: str, ref_file: str, out: multiprocessing.Queue) -> None:
    try:
        out.put(fan_out(uri, experiment, parent, "child", ref_file))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_stage_runs_lose_no_record(tmp_path: Path) -> None:
    """8 threads here and 8 in a second process write 64 stage runs to one SQLite store at once: every run
    is FINISHED with all its params, metric steps, output tags, its ref.json and exactly one input per
    distinct artifact (the shared dataset read under two names is one input); nothing is counted lost."""
    from mlflow import MlflowClient

    uri, experiment = f"sqlite:///{tmp_path}/mlflow.db", "fanout"
    ref_file = tmp_path / "ref.json"
    ref_file.write_text("{}")
    parent_tracker = Tracker(uri, experiment)
    assert parent_tracker.start()
    parent = parent_tracker.start_run("fanout")
    assert parent is not None

    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(uri, experiment, parent, str(ref_file), queue))
    child.start()
    lost_here = fan_out(uri, experiment, parent, "main", str(ref_file))
    lost_child = queue.get(timeout=300)
    child.join(timeout=60)
    parent_tracker.end_run()
    assert (lost_here, lost_child, parent_tracker.lost) == (0, 0, 0)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'", max_results=1000)
    assert len(runs) == 2 * THREADS * STAGES_PER_THREAD
    assert client.get_run(parent).info.status == "FINISHED"
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["ddflow.status"] == "computed"
        assert r.data.params["stage_key"] == f"{int(r.data.params['worker']):04d}{int(r.data.params['stage']):04d}"
        assert r.data.tags["ddflow.output_uri"].startswith("/out/")
        assert r.data.metrics["acc_mean"] == 0.5 and r.data.tags["result.note"] == "ok"
        for key in ("acc", "loss"):
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, key)) == list(range(STEPS))
        inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in r.inputs.dataset_inputs}
        assert len(inputs) == 2 and inputs[f"ingest/{SHARED.key}"]["mlflow.data.context"] == "again,data"
        assert [a.path for a in client.list_artifacts(r.info.run_id, "ddflow")] == ["ddflow/ref.json"]


def test_pipeline_fan_out_on_eight_workers_tracks_every_stage(fake_fmnist: Path, tmp_path: Path,
                                                              prefect_harness: None) -> None:
    """A real pipeline on 8 worker threads (three class-group distillations, four evaluation rounds per set,
    all running at once): MLflow holds one FINISHED nested run per stage of the summary, each with its
    params, its metrics and one input per distinct upstream artifact of its ref.json; nothing is lost."""
    from mlflow import MlflowClient

    from flows.distill import distill_flow

    cfg = tmp_path / "c.yaml"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg.write_text(f"""
name: fan8
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {fake_fmnist}}}, shard_size: 50}}
methods:
  random: {{width: 8}}
  dm: {{iterations: 2, width: 8, batch_real: 8, checkpoint_every: 0}}
class_groups: 3
evaluation: {{epochs: 1, width: 8, num_eval: 4}}
runner: {{kind: threads, max_workers: 8}}
tracking: {{uri: "{uri}", experiment: fan8}}
""")
    summary = distill_flow(str(cfg), [], str(tmp_path / "root"))
    assert summary["tracking"]["lost"] == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fan8")
    parent = summary["tracking"]["parent_run_id"]
    runs = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'", max_results=1000)
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(runs) == len(summary["stages"]) >= 15
    store = ArtifactStore(tmp_path / "root")
    for r in runs:
        tags = r.data.tags
        assert r.info.status == "FINISHED" and tags["ddflow.status"] == "computed", tags
        record = store.read_record(tags["ddflow.stage"], tags["ddflow.stage_key"])
        assert record is not None and r.data.params["stage_key"] == record.ref.key
        assert tags["ddflow.output_digest"] == record.ref.sha256
        assert len(r.inputs.dataset_inputs) == len(set(record.inputs.values()))
        numeric = {k: v for k, v in record.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        assert {k: r.data.metrics[k] for k in numeric} == pytest.approx(numeric)
        if tags["ddflow.stage"] == "evaluate":
            assert {"acc_mean", "acc_std"} <= set(numeric)


def test_end_run_closes_runs_left_running(tmp_path: Path) -> None:
    """A stage that never finished (its task crashed, or a worker process was killed) leaves a nested run
    RUNNING; ending the pipeline run closes it as FAILED with ddflow.status=interrupted, also one opened by
    another tracker (another process) under the same parent, and also after tracking was disabled."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "interrupted")
    assert tracker.start()
    parent = tracker.start_run("crashy")
    ours = tracker.start_stage("distill", "00000001", WorkConfig(worker=0, stage=0), {}, kind="distilled")
    other = Tracker(uri, "interrupted")
    other.parent_run_id = parent
    theirs = other.start_stage("distill", "00000002", WorkConfig(worker=1, stage=0), {}, kind="distilled")
    done = tracker.start_stage("ingest", "00000003", WorkConfig(worker=2, stage=0), {}, kind="dataset")
    done.finish(SHARED, {})
    tracker.enabled = False  # as after a lasting failure mid-run
    tracker.end_run(failed=True)

    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FAILED"
    for run in (ours, theirs):
        got = client.get_run(str(run.run_id))
        assert got.info.status == "FAILED" and got.data.tags["ddflow.status"] == "interrupted"
    assert client.get_run(str(done.run_id)).info.status == "FINISHED"


@pytest.mark.parametrize(("message", "transient"), [
    ("(sqlite3.OperationalError) database is locked", True),
    ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name", True),
    ("QueuePool limit of size 5 overflow 10 reached, connection timed out", True),
    ("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 503", True),
    ("tracking server went away", False),
    ("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found", False),
])
def test_transient_failures_are_recognised(message: str, transient: bool) -> None:
    """Lock contention, racing inserts, pool exhaustion and overload are retried; other errors are not,
    also when the transient error is the cause of the one raised."""
    assert is_transient(RuntimeError(message)) is transient
    try:
        raise RuntimeError("MLflow failed") from RuntimeError(message)
    except RuntimeError as exc:
        assert is_transient(exc) is transient


def test_retrying_client_retries_transient_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call failing twice with 'database is locked' succeeds on the third attempt; a permanent error is
    raised at once."""
    import tasks.runtime.mlflow_client as mc

    monkeypatch.setattr(mc, "RETRY_DELAYS", (0.0,) * 4)
    calls: list[str] = []

    class Flaky:
        def log_batch(self, run_id: str) -> str:
            calls.append(run_id)
            if len(calls) < 3:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return "ok"

        def get_run(self, run_id: str) -> None:
            calls.append("get")
            raise KeyError(run_id)

    client = RetryingClient(Flaky(), threading.RLock())
    assert client.log_batch("r1") == "ok" and calls == ["r1"] * 3
    with pytest.raises(KeyError):
        client.get_run("r2")
    assert calls.count("get") == 1
