"""MLflow tracking for pipeline runs: one parent run per flow run, one nested run per stage.

``mlflow`` is imported lazily. Every call goes through :meth:`Tracker._guard`, which

* serialises the calls of one process to one tracking URI through one lock (concurrent stage tasks
  share a store: SQLite allows one writer, and MLflow's pool holds 15 connections),
* retries a transient failure (SQLite ``database is locked``, a racing ``UNIQUE constraint`` insert from
  another process, pool exhaustion, HTTP 429/5xx) with exponential back-off for up to ~30 s, and
* when the store is unreachable at start (bad URI, server down, sqlite path not writable) or keeps failing,
  warns once (one log line on ``ddflow.tracking``), counts what it could not record
  (:attr:`Tracker.lost`, also in the run summary) and becomes a no-op, so the pipeline still finishes;
  the lineage is in the artifact store's ``ref.json`` files either way.

:meth:`Tracker.end_run` closes every run of the pipeline it opened, also after a failure or a lost
connection: nested runs still RUNNING (a stage that crashed or was killed) end as FAILED with
``ddflow.status=interrupted``, so no run stays RUNNING.

Each stage run records: params = the flattened resolved stage config + ``config_digest`` and
``stage_key``; tags = stage, stage key, output digest/uri/kind, Prefect flow/task run ids, code
version; metrics (batched, with steps); inputs = one ``MetaDataset`` per upstream artifact carrying
our digest (``sha256[:16]``; MLflow's own digest only samples the data); artifacts = ``ref.json`` and
whatever the stage logs. MLflow has no output-dataset API, so the output is recorded as tags.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ddcore.config import StageConfig
from tasks.runtime.mlflow_client import RetryingClient, clip, flatten, is_number, metric_key, uri_lock
from tasks.runtime.mlflow_source import artifact_source
from tasks.runtime.refs import ArtifactRef, code_version, code_version_label

if TYPE_CHECKING:
    from tasks.runtime.stage_run import StageRun

log = logging.getLogger("ddflow.tracking")
T = TypeVar("T")

_WARNED: set[str] = set()
_WARNED_GUARD = threading.Lock()
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment in its GenAI or its model-training view after this tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class Tracker:
    """MLflow tracking that never stops the pipeline.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:////abs/mlflow.db``, ``http://host:5000``, ...);
            ``None`` makes a no-op tracker.
        experiment: experiment name (created when missing).
        artifact_location: where a newly created experiment stores artifacts (default: MLflow's).
    """

    def __init__(self, tracking_uri: str | None, experiment: str = "ddflow", *,
                 artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.enabled = tracking_uri is not None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._lock = uri_lock(tracking_uri)
        self._cached_tags: dict[str, str] = {}  # ddflow.cached.<node> -> run id, written by end_run
        self.lost = 0
        self.lost_reason: str | None = None

    @classmethod
    def for_store(cls, store: Any, experiment: str = "ddflow", tracking_uri: str | None = None) -> Tracker:
        """Tracker for a pipeline over ``store``: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
        ``sqlite:///<root>/mlflow.db`` for a local root (artifacts in ``<root>/mlartifacts``), else no-op."""
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if store.is_local:
            artifacts = Path(store.root, "mlartifacts").as_uri()
            uri = uri or f"sqlite:///{store.root}/mlflow.db"
        return cls(uri, experiment, artifact_location=artifacts)

    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = uri_lock(self.tracking_uri)

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r}, {self.experiment!r}, enabled={self.enabled})"

    # -- plumbing --------------------------------------------------------------------------
    def _guard(self, what: str, fn: Callable[[], T], *, always: bool = False) -> T | None:
        """``fn()``; on a lasting failure (what :class:`RetryingClient` could not retry away) warn once, count
        the loss and disable tracking. ``always`` tries even when tracking was disabled (closing runs)."""
        if self.tracking_uri is None:
            return None
        if not (self.enabled or always):
            self.lost += 1
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the pipeline
            if self.enabled:
                self._disable(what, exc)
            self.lost += 1
            return None

    def _disable(self, what: str, exc: BaseException) -> None:
        self.enabled = False
        msg = (str(exc).strip().splitlines() or [""])[0][:200]
        self.lost_reason = f"{type(exc).__name__} while {what}: {msg}"
        with _WARNED_GUARD:
            if self.tracking_uri in _WARNED:
                return
            _WARNED.add(str(self.tracking_uri))
        log.warning("MLflow tracking at %s is unavailable (%s while %s: %s); continuing without tracking, "
                    "lineage is still written to ref.json", self.tracking_uri, type(exc).__name__, what, msg)

    def client(self) -> Any:
        """The ``MlflowClient`` behind a :class:`RetryingClient` (created, checked and bound to the experiment
        on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        uri = str(self.tracking_uri)
        if uri.startswith(("http://", "https://")):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3):  # noqa: S310 - user-given URI
                pass
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
                raise PermissionError(f"{db} is not writable")
        from mlflow import MlflowClient

        client = RetryingClient(MlflowClient(tracking_uri=uri), self._lock)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.experiment_id = client.create_experiment(self.experiment, artifact_location=self.artifact_location,
                                                          tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # MLflow 3 would guess (and often guess GenAI)
                client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return client

    def start(self) -> bool:
        """Connect now (so an unreachable store is reported before the first stage); ``True`` when usable."""
        return self._guard("connecting", self.client) is not None

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, name: str, *, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> str | None:
        """Open the parent run of a pipeline execution; returns its id (``None`` when disabled)."""
        def go() -> str:
            client = self.client()
            all_tags = {**default_tags(), "ddflow.role": "pipeline", **{k: str(v) for k, v in (tags or {}).items()}}
            run = client.create_run(self.experiment_id, run_name=name, tags=all_tags)
            self._log_batch(run.info.run_id, params=params or {})
            return run.info.run_id

        self.parent_run_id = self._guard("starting the pipeline run", go)
        return self.parent_run_id

    def log_parent_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local file (summary.json, a plot) into the parent run's artifacts."""
        if self.parent_run_id is None:
            return
        run_id = self.parent_run_id
        self._guard("logging a run artifact", lambda: self.client().log_artifact(run_id, str(path), artifact_path))

    def end_run(self, *, failed: bool = False) -> None:
        """Close the pipeline run (FAILED when ``failed``) and every nested run of it still RUNNING, found by
        its parent tag (so also those opened by other processes, e.g. Ray workers). Tried even after tracking
        was disabled mid-run, so a store that came back gets no run left RUNNING."""
        if self.parent_run_id is None:
            return
        parent = self.parent_run_id

        def go() -> None:
            client = self.client()
            with self._lock:
                cached, self._cached_tags = dict(self._cached_tags), {}
            if cached:
                self._log_batch(parent, tags=cached)
            found = client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}' and "
                                       "attributes.status = 'RUNNING'", max_results=5000)
            for run in found:
                client.set_tag(run.info.run_id, "ddflow.status", "interrupted")
                client.set_terminated(run.info.run_id, "FAILED")
            client.set_terminated(parent, "FAILED" if failed else "FINISHED")

        self._guard("ending the pipeline run", go, always=True)

    def status(self) -> dict[str, Any]:
        """What the run summary says about tracking: URI, experiment, parent run id, records lost."""
        out: dict[str, Any] = {"uri": self.tracking_uri, "experiment": self.experiment,
                               "experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
                               "lost": self.lost}
        if self.lost_reason:
            out["error"] = self.lost_reason
        return out

    def start_stage(self, stage: str, key: str, config: StageConfig, inputs: Mapping[str, ArtifactRef], *,
                    kind: str, status: str = "running", label: str | None = None) -> StageRun:
        """Open the nested run of one stage (params, tags, input datasets), named ``label`` (the plan node:
        ``distill dm ipc10``) or the stage."""
        from tasks.runtime.stage_run import StageRun

        def go() -> str:
            client = self.client()
            tags = {**default_tags(), "ddflow.role": "stage", "ddflow.stage": stage, "ddflow.stage_key": key,
                    "ddflow.kind": kind, "ddflow.status": status, "ddflow.node": label or stage}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            run = client.create_run(self.experiment_id, run_name=label or stage, tags=tags)
            run_id = run.info.run_id
            params = {**flatten(config.model_dump(mode="json")), "config_digest": config.digest(), "stage_key": key}
            self._log_batch(run_id, params=params)
            self._log_inputs(run_id, inputs)
            return run_id

        return StageRun(self, self._guard(f"starting stage {stage}", go))

    def record_cached(self, stage: str, ref: ArtifactRef, *, label: str | None = None) -> None:
        """A stage whose output was reused logs no run of its own: the pipeline run gets the tag
        ``ddflow.cached.<label>`` = the id of the run that computed it (from the output's ``ref.json``, else
        searched by stage key; ``untracked`` if none is known). The tags are written in one batch by
        :meth:`end_run`."""
        if self.parent_run_id is None:
            return
        from tasks.runtime.refs import read_record_at

        rec = read_record_at(ref.uri)
        made = rec.tracking.get("run_id") if rec is not None and rec.tracking.get("uri") == str(self.tracking_uri) \
            else None
        if made is None:
            def search() -> str:
                found = self.client().search_runs(
                    [self.experiment_id], f"tags.`ddflow.stage_key` = '{ref.key}' and tags.`ddflow.status` = "
                    "'computed' and attributes.status = 'FINISHED'", max_results=1,
                    order_by=["attributes.start_time DESC"])
                return found[0].info.run_id if found else "untracked"

            made = self._guard(f"recording cached stage {stage}", search)
        if made is not None:
            with self._lock:
                self._cached_tags[metric_key(f"ddflow.cached.{label or stage}")] = made

    def log_pipeline_inputs(self, inputs: Mapping[str, ArtifactRef]) -> None:
        """Record ``inputs`` (the ingested dataset) as input datasets of the pipeline run."""
        if self.parent_run_id is not None:
            parent = self.parent_run_id
            self._guard("logging the pipeline's inputs", lambda: self._log_inputs(parent, inputs))

    def log_pipeline_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` (the resolved config as YAML) as an artifact of the pipeline run."""
        if self.parent_run_id is not None:
            parent = self.parent_run_id
            self._guard("logging a run artifact", lambda: self.client().log_text(parent, text, artifact_file))

    def log_pipeline_results(self, rows: list[Mapping[str, Any]]) -> None:
        """The report rows on the pipeline run: metrics ``<method>/ipc<IPC>/<score>`` (accuracy, random, IOR,
        HLR, LRS, with their stds) and the table as ``results/table.json`` (MLflow's table artifact)."""
        if self.parent_run_id is None or not rows:
            return
        parent = self.parent_run_id
        scores = ("acc_mean", "acc_std", "random_mean", "random_std", "ior", "ior_std", "hlr", "hlr_std", "lrs")
        metrics = [(f"{r['method']}/ipc{r['ipc']}/{k}", float(r[k]), 0) for r in rows for k in scores
                   if is_number(r.get(k))]
        columns = ("method", "ipc", *scores, "seconds", "digest")
        table = {c: [r.get(c) for r in rows] for c in columns}

        def go() -> None:
            self._log_batch(parent, metrics=metrics)
            self.client().log_table(parent, data=table, artifact_file="results/table.json")

        self._guard("logging the results", go)

    def run_tags(self, run_id: str) -> dict[str, str] | None:
        """Tags of run ``run_id`` (used by lineage to map a run to its output), ``None`` when unavailable."""
        run = self._guard("reading a run", lambda: self.client().get_run(run_id))
        return None if run is None else dict(run.data.tags)

    # -- helpers ---------------------------------------------------------------------------
    def _log_batch(self, run_id: str, *, params: Mapping[str, Any] = (), tags: Mapping[str, Any] = (),
                   metrics: list[tuple[str, float, int]] = ()) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self.client()
        ps = [Param(k[:250], clip(v, 6000)) for k, v in dict(params).items()]
        ts = [RunTag(k[:250], clip(v, 8000)) for k, v in dict(tags).items()]
        now = int(time.time() * 1000)
        ms = [Metric(metric_key(k), float(v), now, int(step)) for k, v, step in metrics]
        for i in range(0, max(len(ps), len(ts), 1), 100):
            if ps[i:i + 100] or ts[i:i + 100]:
                client.log_batch(run_id, params=ps[i:i + 100], tags=ts[i:i + 100])
        for i in range(0, len(ms), 1000):
            client.log_batch(run_id, metrics=ms[i:i + 1000])

    def _log_inputs(self, run_id: str, inputs: Mapping[str, ArtifactRef]) -> None:
        if not inputs:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        by_ref: dict[ArtifactRef, list[str]] = {}
        for name in sorted(inputs):
            by_ref.setdefault(inputs[name], []).append(name)
        datasets = []  # one input per artifact, even when a stage reads it under several names
        for ref, names in by_ref.items():
            ds = MetaDataset(source=artifact_source(ref.uri), name=f"{ref.stage}/{ref.key}", digest=ref.short)
            tags = [InputTag("mlflow.data.context", ",".join(names)), InputTag("ddflow.stage", ref.stage),
                    InputTag("ddflow.stage_key", ref.key), InputTag("ddflow.kind", ref.kind),
                    InputTag("ddflow.sha256", ref.sha256)]
            datasets.append(DatasetInput(dataset=ds._to_mlflow_entity(), tags=tags))
        self.client().log_inputs(run_id, datasets=datasets)


def default_tags() -> dict[str, str]:
    """Code version and, inside a Prefect run, the flow/task run ids."""
    version = code_version()
    tags = {"ddflow.code_version": code_version_label(version), "ddflow.version": str(version.get("ddflow"))}
    if version.get("git"):
        tags["ddflow.git_commit"] = str(version["git"])
    tags.update(prefect_ids())
    return tags


def prefect_ids() -> dict[str, str]:
    """``prefect.flow_run_id`` / ``prefect.task_run_id`` when running under Prefect (never imports it)."""
    if "prefect" not in sys.modules:
        return {}
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        out: dict[str, str] = {}
        if (fctx := FlowRunContext.get()) is not None and fctx.flow_run is not None:
            out["prefect.flow_run_id"] = str(fctx.flow_run.id)
            out["prefect.flow_run_name"] = str(fctx.flow_run.name)
        if (tctx := TaskRunContext.get()) is not None:
            out["prefect.task_run_id"] = str(tctx.task_run.id)
            out["prefect.flow_run_id"] = str(tctx.task_run.flow_run_id)
        return out
    except Exception:  # noqa: BLE001 - best effort
        return {}
