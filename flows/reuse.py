"""Smaller flows for reuse: ``ingest_flow`` (just the dataset) and ``evaluate_flow`` (any set).

``evaluate_flow`` evaluates an existing synthetic-set artifact (made by ddflow, or by another tool and
ingested) against a dataset artifact under a config's evaluation recipe, with the random-subset
baseline of the same IPC of stored images (an NCFM ``factor`` 2 set: its mosaics, not their decoded crops);
both go through the same cached stages as ``distill_flow``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ddcore.data import open_artifact
from ddcore.evaluate.metrics import stored_ipc
from flows.distill import Branches, Timeline, expand_force, load_config
from flows.orchestration import PipelineRun, default_root
from tasks.configs import ReportConfig
from tasks.ingest import INGEST
from tasks.report import REPORT, read_report
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker


def external_ref(uri: str, kind: str) -> ArtifactRef:
    """A reference to a dataset artifact that no stage of this store produced (verified on open)."""
    art = open_artifact(uri)
    return ArtifactRef(uri=art.uri, sha256=art.digest, stage="external", key=art.digest[:20], kind=kind)  # type: ignore[arg-type]


@flow(name="ddflow-ingest", log_prints=True)
def ingest_flow(config_path: str, overrides: list[str] | None = None, root: str | None = None) -> dict[str, Any]:
    """Ingest the config's data source into the store (cached like the full flow's first stage)."""
    cfg = load_config(config_path, overrides)
    store = ArtifactStore(default_root(root))
    with PipelineRun(store, run_name=f"{cfg.name}-ingest", stages=("ingest",)) as run:
        ref = run.run(INGEST, cfg.data)
    return ref.model_dump()


@flow(name="ddflow-evaluate", log_prints=True)
def evaluate_flow(synthetic: str, dataset: str, config_path: str, overrides: list[str] | None = None,
                  root: str | None = None, force: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``synthetic`` on ``dataset``'s test split under the config's recipe; returns the result row."""
    cfg = load_config(config_path, overrides)
    store = ArtifactStore(default_root(root))
    tracker = Tracker.for_store(store, cfg.tracking.experiment, cfg.tracking.uri) if cfg.tracking.enabled \
        else Tracker.disabled()
    syn, data = external_ref(synthetic, "synthetic"), external_ref(dataset, "dataset")
    extra = open_artifact(synthetic).meta.extra
    ipc = stored_ipc(extra, int(extra.get("ipc") or 1))  # the baseline matches the stored images (DD-Ranking)
    with PipelineRun(store, tracker=tracker, run_name=f"{cfg.name}-evaluate", force=expand_force(force),
                     stages=("evaluate_round", "evaluate", "baseline_round", "baseline", "report")) as run:
        step = Timeline(run)
        fan = Branches(run, cfg, step, num_classes=open_artifact(dataset).meta.num_classes)
        fan.evaluate(syn, data, f"evaluate/external/ipc{ipc}")
        if cfg.random_baseline:
            fan.baseline(data, ipc, f"baseline/ipc{ipc}")
        refs = fan.collect()
        inputs = {f"set/external/{ipc}": syn, f"eval/external/{ipc}": refs[f"evaluate/external/ipc{ipc}"]}
        if cfg.random_baseline:
            inputs[f"baseline/{ipc}"] = refs[f"baseline/ipc{ipc}"]
        rep = step(REPORT, ReportConfig(run=f"{cfg.name}-evaluate", full_data_acc=cfg.full_data_acc), inputs)
    return read_report(rep.uri)["results"][0]
