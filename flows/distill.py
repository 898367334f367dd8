"""``distill_flow``: the run plan of a config (:mod:`flows.plan`) executed as cached Prefect stages.

Every stage is a cached Prefect task keyed on (stage, config, upstream digests, version), so a
re-run executes only stages whose inputs changed or that failed, and ``force`` recomputes named
stages plus everything downstream. The flow writes ``<root>/runs/<name>/summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow

from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from flows.config import RunConfig, load_config
from flows.execute import PlanExecutor
from flows.orchestration import PipelineRun, default_root
from flows.plan import INGEST, STAGES, build_plan, expand_force
from flows.runners import RunnerConfig, cuda_devices, runner_session
from tasks.report import read_report
from tasks.runtime.mlflow_client import flatten
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker


def run_config(cfg: RunConfig, *, root: str | None = None, force: list[str] | None = None) -> dict[str, Any]:
    """Run the plan of ``cfg`` and return the summary (also written to ``runs/<name>/summary.json``).

    The data is ingested first (its class count splits class-group distillations), then the rest of the
    plan runs through :class:`~flows.execute.PlanExecutor`.
    """
    store = ArtifactStore(default_root(root))
    tracker = (Tracker.for_store(store, cfg.tracking.experiment, cfg.tracking.uri) if cfg.tracking.enabled
               else Tracker.disabled())
    t_start = time.perf_counter()
    with PipelineRun(store, tracker=tracker, force=expand_force(force), run_name=cfg.name, stages=STAGES,
                     params={"config_digest": cfg.digest(), **flatten(cfg.model_dump(mode="json"))}) as run:
        tracker.log_pipeline_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/config.yaml")
        ex = PlanExecutor(run, device=cfg.device, runner=cfg.runner)
        head = build_plan(cfg, num_classes=None)
        data = ex.execute([head.node(INGEST)])[INGEST]
        tracker.log_pipeline_inputs({"dataset": data})
        plan = build_plan(cfg, num_classes=open_artifact(data.uri, verify="none").meta.num_classes)
        refs = ex.execute(plan.nodes)
        rep = refs["report"]
        report = read_report(rep.uri)
        summary = {"run": cfg.name, "config_digest": cfg.digest(), "results": report["results"],
                   "ior_baseline": report.get("ior_baseline"), "hlr_rule": report.get("hlr_rule"),
                   "stages": ex.timeline, "report": rep.uri, "dataset": {"uri": data.uri, "digest": data.sha256},
                   "tracking": tracker.status(),
                   "seconds": round(time.perf_counter() - t_start, 3)}
        write_summary(store, cfg.name, summary)
        tracker.log_pipeline_results(report["results"])
        tracker_summary(tracker, store, cfg.name, rep)
    return summary


def write_summary(store: ArtifactStore, name: str, summary: dict[str, Any]) -> str:
    """Write ``<root>/runs/<name>/summary.json`` atomically; returns its URI."""
    fs, path = fsio.get_fs(store.uri("runs", name))
    fs.makedirs(path, exist_ok=True)
    tmp, final = fsio.join(path, ".summary.json.tmp"), fsio.join(path, "summary.json")
    with fs.open(tmp, "wb") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    fs.mv(tmp, final)
    return final


def tracker_summary(tracker: Tracker, store: ArtifactStore, name: str, report: ArtifactRef) -> None:
    """Attach summary.json and the accuracy plot to the parent MLflow run (no-op without tracking)."""
    for uri in (store.uri("runs", name, "summary.json"), f"{report.uri}/accuracy_vs_ipc.png"):
        if "://" not in uri and Path(uri).is_file():
            tracker.log_parent_artifact(uri)


@flow(name="ddflow-distill", log_prints=True)
def distill_flow(config_path: str, overrides: list[str] | None = None, root: str | None = None,
                 force: list[str] | None = None) -> dict[str, Any]:
    """Prefect flow over a config file (what deployments and ``ddflow run`` call)."""
    return run_config(load_config(config_path, overrides), root=root, force=force)


def default_runner(cfg: RunnerConfig) -> RunnerConfig:
    """Thread pools get one worker per GPU (one on a CPU-only machine, where stages would only
    compete for the same cores) unless ``max_workers`` is set."""
    if cfg.kind == "threads" and cfg.max_workers is None:
        return cfg.model_copy(update={"max_workers": max(1, len(cuda_devices()))})
    return cfg


def run_with_runner(config_path: str, overrides: list[str] | None = None, root: str | None = None,
                    force: list[str] | None = None) -> dict[str, Any]:
    """Run :func:`distill_flow` on the task runner the config asks for (threads or Ray)."""
    cfg = load_config(config_path, overrides)
    with runner_session(default_runner(cfg.runner)) as task_runner:
        return distill_flow.with_options(task_runner=task_runner)(config_path, overrides, root, force)


__all__ = ["STAGES", "distill_flow", "load_config", "run_config"]
