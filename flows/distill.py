"""``distill_flow``: ingest -> core set -> VAE/latents -> distill -> prune -> evaluate -> report.

Every stage is a cached Prefect task keyed on (stage, config, upstream digests, version), so a
re-run executes only stages whose inputs changed or that failed, and ``force`` recomputes named
stages plus everything downstream. The flow writes ``<root>/runs/<name>/summary.json``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow

from ddcore.config import apply_overrides, load_yaml
from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from ddcore.distill.config import DistillConfig
from ddcore.distill.merge import group_configs
from flows.config import LATENT_METHODS, RunConfig
from flows.orchestration import PipelineRun, default_root
from flows.runners import RunnerConfig, assign_devices, cuda_devices, runner_session, stage_options
from tasks.configs import (
    BaselineEvalConfig,
    BaselineRoundConfig,
    EvalRoundConfig,
    EvaluateConfig,
    MergeConfig,
    ReportConfig,
)
from tasks.distill import DISTILL
from tasks.evaluate import BASELINE, BASELINE_ROUND, EVALUATE, EVALUATE_ROUND, ROUND
from tasks.features import EXTRACT_FEATURES
from tasks.ingest import INGEST
from tasks.merge import MERGE, PART
from tasks.prune import PRUNE
from tasks.report import REPORT, read_report
from tasks.runtime.refs import ArtifactRef, numbered
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker
from tasks.teacher import TRAIN_TEACHER

STAGES = ("ingest", "extract_features", "train_vae", "encode_latents", "train_teacher", "distill", "merge", "prune",
          "evaluate_round", "evaluate", "baseline_round", "baseline", "report")


def load_config(config_path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a pipeline config (one error line on a bad key)."""
    data = apply_overrides(load_yaml(config_path), overrides or [])
    return RunConfig.from_mapping(data, where=str(config_path))


class Timeline:
    """Per-invocation stage outcomes for ``summary.json``: name, cached?, seconds."""

    def __init__(self, run: PipelineRun) -> None:
        self.run, self.stages = run, []  # type: ignore[var-annotated]

    def __call__(self, task: Any, config: Any, inputs: dict[str, ArtifactRef] | None = None, *,
                 label: str | None = None, device: str | None = None) -> ArtifactRef:
        t0 = time.perf_counter()
        ref = self.run.run(task, config, inputs, device=device)
        name = str(task.name)
        self.stages.append({"name": label or name, "cached": self.run.outcomes.get(name) == "cached",
                            "seconds": round(time.perf_counter() - t0, 3)})
        return ref


class Branches:
    """Stage tasks submitted to the flow's task runner (fan-out), collected in submission order.

    Devices are handed out round robin over the visible GPUs (``cpu`` when there are none) in
    submission order, so the class-group parts of a distillation and the rounds of an evaluation
    land on different GPUs.
    """

    def __init__(self, run: PipelineRun, cfg: RunConfig, timeline: Timeline, *, num_classes: int) -> None:
        self.run, self.cfg, self.timeline, self.num_classes = run, cfg, timeline, num_classes
        self.pending: list[tuple[str, Any]] = []
        self._devices = itertools.cycle((cuda_devices() or ["cpu"]) if cfg.device == "auto" else [cfg.device])

    def submit(self, task: Any, config: Any, inputs: dict[str, Any], *, label: str,
               device: str | None = None) -> Any:
        with stage_options(self.cfg.runner, gpu="gpu" in task.tags):
            fut = self.run.submit(task, config, inputs, device=device or next(self._devices))
        self.pending.append((label, fut))
        return fut

    def distill(self, name: str, ipc: int, inputs: dict[str, Any]) -> tuple[Any, str]:
        """One method at one IPC: a single ``distill`` task, or ``class_groups`` parts and a ``merge``."""
        cfg = self.cfg.method_config(name, ipc)
        label = f"distill/{name}/ipc{ipc}"
        if not isinstance(cfg, DistillConfig) or self.cfg.class_groups == 1:
            return self.submit(DISTILL, cfg, inputs, label=label), label
        groups = group_configs(cfg, self.num_classes, self.cfg.class_groups)
        parts = {numbered(PART, i): self.submit(DISTILL, part, inputs,
                                           label=f"{label}/classes{part.classes[0]}-{part.classes[-1]}")  # type: ignore[index]
                 for i, part in enumerate(groups)}
        merge_inputs = {"dataset": inputs["dataset"], **parts}
        return self.submit(MERGE, MergeConfig(parts=len(parts)), merge_inputs, label=label), label

    def evaluate(self, syn: Any, data: ArtifactRef, label: str, teacher: ArtifactRef | None = None) -> None:
        """``num_eval`` round tasks (one per seed) and the aggregate ``evaluate`` task of one set; with a
        ``teacher``, under the soft-label protocol."""
        ev = (EvaluateConfig(eval=self.cfg.soft_eval(), teacher=True) if teacher is not None
              else EvaluateConfig(eval=self.cfg.evaluation))
        extra = {"teacher": teacher} if teacher is not None else {}
        rounds = {numbered(ROUND, i): self.submit(EVALUATE_ROUND, EvalRoundConfig(evaluate=ev, index=i),
                                             {"dataset": data, "synthetic": syn, **extra}, label=f"{label}/round{i}")
                  for i in range(ev.eval.num_eval)}
        self.submit(EVALUATE, ev, {"synthetic": syn, **rounds}, label=label, device="cpu")

    def baseline(self, data: ArtifactRef, ipc: int, label: str, teacher: ArtifactRef | None = None) -> None:
        """The random-subset baseline of ``ipc``: one task per round, then the aggregate."""
        bc = (BaselineEvalConfig(eval=self.cfg.soft_eval(), ipc=ipc, teacher=True) if teacher is not None
              else BaselineEvalConfig(eval=self.cfg.evaluation, ipc=ipc))
        extra = {"teacher": teacher} if teacher is not None else {}
        rounds = {numbered(ROUND, i): self.submit(BASELINE_ROUND, BaselineRoundConfig(baseline=bc, index=i),
                                             {"dataset": data, **extra}, label=f"{label}/round{i}")
                  for i in range(bc.eval.num_eval)}
        self.submit(BASELINE, bc, rounds, label=label, device="cpu")

    def collect(self) -> dict[str, ArtifactRef]:
        refs = {}
        for label, fut in self.pending:
            ref = self.run.result(fut)
            cached = fut.state.name == "Cached"
            rec = self.run.store.read_record_at(ref.uri)
            seconds = 0.0 if cached or rec is None else round(rec.duration_s, 3)
            self.timeline.stages.append({"name": label, "cached": cached, "seconds": seconds})
            refs[label] = ref
        return refs


def expand_force(force: list[str] | None) -> list[str]:
    """``--force evaluate`` / ``baseline`` also recompute their rounds (the rounds are the real work)."""
    out = list(force or ())
    for agg, rounds in (("evaluate", "evaluate_round"), ("baseline", "baseline_round")):
        if agg in out and rounds not in out:
            out.append(rounds)
    return out


def run_config(cfg: RunConfig, *, root: str | None = None, force: list[str] | None = None) -> dict[str, Any]:
    """Run the whole chain for ``cfg`` and return the summary (also written to ``runs/<name>/``).

    Shared stages (ingest, core set, VAE, latents) run in the flow; the per-(method, IPC) branches
    (distill [per class group + merge] -> prune -> evaluation rounds -> aggregate) and the random
    baselines are submitted to the task runner, each task on the next visible GPU (``cpu`` without one).
    A post-pruned method gives three rows: ``<method>`` at IPC (distilled directly), ``<method>+prune`` at
    IPC (pruned) and ``<method>`` at the larger IPC it was pruned from (unpruned; evaluated once, and only
    here when that IPC is not in ``ipcs``, where the directly distilled row is the same set; it gets a
    random baseline of its own IPC).
    """
    store = ArtifactStore(default_root(root))
    tracker = (Tracker.for_store(store, cfg.tracking.experiment, cfg.tracking.uri) if cfg.tracking.enabled
               else Tracker.disabled())
    t_start = time.perf_counter()
    with PipelineRun(store, tracker=tracker, force=expand_force(force), run_name=cfg.name, stages=STAGES,
                     params={"config_digest": cfg.digest()}) as run:
        step = Timeline(run)
        device = assign_devices(1)[0] if cfg.device == "auto" else cfg.device
        data = step(INGEST, cfg.data)
        feats = None
        if cfg.core_set is not None and cfg.core_set.methods:
            feats = step(EXTRACT_FEATURES, cfg.prune_config(cfg.core_set), {"dataset": data}, device=device)
        latent_inputs: dict[str, ArtifactRef] = {}
        if any(m in LATENT_METHODS for m in cfg.methods):
            from tasks.latents import ENCODE_LATENTS, TRAIN_VAE

            vae = step(TRAIN_VAE, cfg.vae, {"dataset": data}, device=device)
            lat = step(ENCODE_LATENTS, cfg.encode, {"dataset": data, "vae": vae}, device=device)
            latent_inputs = {"vae": vae, "latents": lat}
        teacher = None
        if cfg.soft_labels is not None and cfg.soft_labels.methods:
            teacher = step(TRAIN_TEACHER, cfg.soft_labels.teacher, {"dataset": data}, device=device)
        fan = Branches(run, cfg, step, num_classes=open_artifact(data.uri, verify="none").meta.num_classes)
        report_inputs: dict[str, str] = {}

        def add_baselines(ipc: int) -> None:
            """Random real subsets of ``ipc`` per class (and under the teacher), once per IPC."""
            if not cfg.random_baseline or f"baseline/{ipc}" in report_inputs:
                return
            fan.baseline(data, ipc, f"baseline/ipc{ipc}")
            report_inputs[f"baseline/{ipc}"] = f"baseline/ipc{ipc}"
            if teacher is not None:
                fan.baseline(data, ipc, f"baseline/ipc{ipc}/soft", teacher=teacher)
                report_inputs[f"baseline/{ipc}/soft"] = f"baseline/ipc{ipc}/soft"

        for ipc in cfg.ipcs:
            add_baselines(ipc)

        def evaluate_rows(label: str, ipc: int, fut: Any, set_label: str, soft: bool) -> None:
            """Evaluate one set as row ``label`` at ``ipc`` (and ``label+soft`` under the teacher)."""
            for row, tch in [(label, None)] + ([(f"{label}+soft", teacher)] if soft else []):
                ev = f"evaluate/{row}/ipc{ipc}"
                fan.evaluate(fut, data, ev, teacher=tch)
                report_inputs[f"set/{row}/{ipc}"] = set_label
                report_inputs[f"eval/{row}/{ipc}"] = ev

        soft_methods = set(cfg.soft_labels.methods) if teacher is not None else set()  # type: ignore[union-attr]
        unpruned: dict[tuple[str, int], tuple[Any, str]] = {}
        for ipc in cfg.ipcs:
            for name in cfg.methods:
                inputs: dict[str, Any] = {"dataset": data}
                if feats is not None and name in cfg.core_set.methods:  # type: ignore[union-attr]
                    inputs["features"] = feats
                if name in LATENT_METHODS:
                    inputs.update(latent_inputs)
                syn, syn_label = fan.distill(name, ipc, inputs)
                sets = {name: (syn, syn_label)}
                if cfg.prune is not None and name in cfg.prune.methods:
                    big_ipc = cfg.post_prune_ipc(ipc)
                    big, big_label = fan.distill(name, big_ipc, inputs)
                    lbl = f"prune/{name}/ipc{big_ipc}->{ipc}"
                    sets[f"{name}+prune"] = (fan.submit(PRUNE, cfg.prune_config(cfg.prune), {"synthetic": big},
                                                        label=lbl), lbl)
                    if big_ipc not in cfg.ipcs:  # else row (name, big_ipc) is this very set, distilled directly
                        unpruned.setdefault((name, big_ipc), (big, big_label))
                for label, (fut, set_label) in sets.items():
                    evaluate_rows(label, ipc, fut, set_label, name in soft_methods)
        for (name, big_ipc), (fut, set_label) in unpruned.items():  # the unpruned sets: rows (name, big_ipc)
            add_baselines(big_ipc)  # so the unpruned row has an IOR of its own size
            evaluate_rows(name, big_ipc, fut, set_label, name in soft_methods)
        refs = fan.collect()
        rep = step(REPORT, ReportConfig(run=cfg.name, full_data_acc=cfg.full_data_acc),
                   {name: refs[label] for name, label in report_inputs.items()})
        report = read_report(rep.uri)
        summary = {"run": cfg.name, "config_digest": cfg.digest(), "results": report["results"],
                   "ior_baseline": report.get("ior_baseline"), "hlr_rule": report.get("hlr_rule"),
                   "stages": step.stages, "report": rep.uri, "dataset": {"uri": data.uri, "digest": data.sha256},
                   "seconds": round(time.perf_counter() - t_start, 3)}
        write_summary(store, cfg.name, summary)
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
