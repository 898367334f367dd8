"""``distill_flow``: the run plan of a config (:mod:`flows.plan`) executed as cached Prefect stages.

Every stage is a cached Prefect task keyed on (stage, config, upstream digests, version), so a
re-run executes only stages whose inputs changed or that failed, and ``force`` recomputes named
stages plus everything downstream. The flow writes ``<root>/runs/<name>/summary.json``.

``distill_flow`` runs its stages on the flow's default task runner; :func:`distill_on_runner` (the entrypoint
of the ``imagenet1k-ray`` deployment) first opens the runner the config's ``runner`` section names (threads,
or a connection to a Ray cluster) and runs ``distill_flow`` on it as a subflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from flows.config import RunConfig, load_config
from flows.execute import PlanExecutor
from flows.orchestration import PipelineRun, default_root
from flows.plan import INGEST, STAGES, build_plan, expand_force
from flows.runners import RunnerConfig, cuda_devices, describe_ray_cluster, runner_session
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
        if not fsio.is_url(uri) and Path(uri).is_file():
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


@flow(name="ddflow-distill-on-runner", log_prints=True)
def distill_on_runner(config_path: str, overrides: list[str] | None = None, root: str | None = None,
                      force: list[str] | None = None) -> dict[str, Any]:
    """The pipeline on the task runner its config names: what a deployment onto a Ray cluster calls.

    Opens :func:`~flows.runners.runner_session` on the config's ``runner`` section (for ``ray``: connects to
    ``runner.address``, where ``auto`` means ``$RAY_ADDRESS`` or the cluster started on this machine, and refuses
    an unreachable head or missing GPUs in one line), logs the cluster, then runs :func:`distill_flow` on that
    runner as a subflow, so stage tasks execute on the cluster's nodes. Same parameters as ``distill_flow``.
    """
    cfg = load_config(config_path, overrides)
    runner = default_runner(cfg.runner)
    logger = get_run_logger()
    with runner_session(runner) as task_runner:
        if runner.kind == "ray":
            where = default_root(root)
            logger.info("%s; artifact root: %s", describe_ray_cluster(), where)
            if warning := shared_root_warning(where):
                logger.warning(warning)
        else:
            logger.info("runner: threads in this process (runner.kind=ray runs the stages on a Ray cluster)")
        return distill_flow.with_options(task_runner=task_runner)(config_path, overrides, root, force)


def shared_root_warning(root: str) -> str | None:
    """A warning when a multi-node Ray cluster writes to a local-path root: right only when every node mounts
    it at that path (a shared filesystem); ``None`` for URLs and one-node clusters."""
    import ray

    if fsio.is_url(root) or sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
        return None
    return (f"artifact root {root} is a local path: every Ray node must mount it at that path (a shared "
            "filesystem); otherwise pass root=s3://bucket/prefix or set DDFLOW_ROOT")


__all__ = ["STAGES", "distill_flow", "distill_on_runner", "load_config", "run_config"]
