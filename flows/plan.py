"""The run plan as data: a validated :class:`~flows.config.RunConfig` becomes a list of stage nodes and the
typed rows of its report.

A :class:`Node` names a stage, its typed config and its inputs by node id; the node id is also the label
the run summary and the logs use (``distill/dm/ipc10``, ``evaluate/dm/ipc10/round0``). Nodes come in
submission order, every input before its consumer. Nothing here runs a stage: the Prefect flow
(``flows/distill.py``), the direct benchmark path (``benchmarks/direct_pipeline.py``) and ``ddflow plan``
(``flows/plan_view.py``) are executors or readers of the same :class:`Plan`. This module imports neither
Prefect nor MLflow.

Placement: ``flow`` nodes (ingest, core set, VAE, latents, denoiser, teacher, report) run one after another on the
run's device; ``branch`` nodes (distillation, pruning, evaluation rounds) go to the task runner, each on
the next visible GPU; ``cpu`` nodes (the small aggregates) go to the task runner on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ddcore.config import StageConfig
from ddcore.distill.merge import group_configs
from ddcore.errors import ConfigError
from ddcore.methods import get_method
from flows.config import RunConfig
from tasks import STAGE_MODULES
from tasks.configs import (
    BaselineEvalConfig,
    BaselineRoundConfig,
    EvalRoundConfig,
    EvaluateConfig,
    MergeConfig,
    ReportConfig,
    ReportRow,
)
from tasks.evaluate import ROUND
from tasks.merge import PART
from tasks.runtime.refs import numbered

Placement = Literal["flow", "branch", "cpu"]

#: Every stage a run can contain, in pipeline order (what ``--force`` accepts).
STAGES = tuple(STAGE_MODULES)
#: ``--force <aggregate>`` also recomputes its rounds (the rounds are the real work).
FORCE_ALSO = {"evaluate": "evaluate_round", "baseline": "baseline_round"}

INGEST, FEATURES, VAE, LATENTS, DENOISER, TEACHER, REPORT = (
    "ingest", "extract_features", "train_vae", "encode_latents", "train_denoiser", "train_teacher", "report")
#: a method's needed input (``Method.needs_for``) -> the node that makes it
NEED_NODES = {"latents": LATENTS, "vae": VAE, "denoiser": DENOISER}


@dataclass(frozen=True)
class Node:
    """One stage execution: ``stage`` with ``config``, fed by ``inputs`` (input name -> node id)."""

    id: str
    stage: str
    config: StageConfig
    inputs: dict[str, str] = field(default_factory=dict)
    placement: Placement = "branch"


@dataclass(frozen=True)
class Plan:
    """Nodes in submission order (inputs first) and the report's rows (``report`` is the last node)."""

    name: str
    nodes: tuple[Node, ...]
    rows: tuple[ReportRow, ...]

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]


def expand_force(force: Iterable[str] | None) -> list[str]:
    """``force`` plus the round stages of forced aggregates; an unknown stage name is one error line."""
    out = list(force or ())
    for name in out:
        if name not in STAGES:
            raise ConfigError(f"force: unknown stage {name!r}; choose from {', '.join(STAGES)}")
    out += [FORCE_ALSO[a] for a in list(out) if a in FORCE_ALSO and FORCE_ALSO[a] not in out]
    return out


class _Builder:
    """Accumulates nodes (deduplicated by id: the same id must mean the same stage, config and inputs)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.rows: list[ReportRow] = []

    def add(self, node: Node) -> str:
        old = self.nodes.get(node.id)
        if old is None:
            self.nodes[node.id] = node
        elif (old.stage, old.config, old.inputs) != (node.stage, node.config, node.inputs):
            raise ConfigError(f"plan: two different stages named {node.id!r}; rename a method or an IPC")
        return node.id

    def evaluation(self, label: str, set_id: str, cfg: EvaluateConfig, teacher: str | None) -> str:
        """``num_eval`` round nodes and their aggregate for one set; returns the aggregate's id."""
        extra = {"teacher": teacher} if teacher else {}
        rounds = {numbered(ROUND, i): self.add(Node(f"{label}/round{i}", "evaluate_round",
                                                    EvalRoundConfig(evaluate=cfg, index=i),
                                                    {"dataset": INGEST, "synthetic": set_id, **extra}))
                  for i in range(cfg.eval.num_eval)}
        return self.add(Node(label, "evaluate", cfg, {"synthetic": set_id, **rounds}, "cpu"))

    def baseline(self, label: str, cfg: BaselineEvalConfig, teacher: str | None) -> str:
        extra = {"teacher": teacher} if teacher else {}
        rounds = {numbered(ROUND, i): self.add(Node(f"{label}/round{i}", "baseline_round",
                                                    BaselineRoundConfig(baseline=cfg, index=i),
                                                    {"dataset": INGEST, **extra}))
                  for i in range(cfg.eval.num_eval)}
        return self.add(Node(label, "baseline", cfg, rounds, "cpu"))


def build_plan(cfg: RunConfig, *, num_classes: int | None) -> Plan:
    """The plan of ``cfg``; ``num_classes`` (of the ingested data) splits class-group distillations.

    With ``num_classes=None`` and ``class_groups > 1`` each grouped distillation appears as one node
    (what ``ddflow plan`` shows before the data is ingested).

    A post-pruned method gives three rows: ``<method>`` at IPC (distilled directly), ``<method>+prune`` at
    IPC (pruned) and ``<method>`` at the larger IPC it was pruned from (the unpruned set, with a random
    baseline of its own IPC; the directly distilled row when that IPC is also in ``ipcs``). Methods listed
    under ``soft_labels`` are also evaluated under the teacher (rows ``<label>+soft``).
    """
    if num_classes is not None and cfg.class_groups > num_classes:
        raise ConfigError(f"class_groups: {cfg.class_groups} groups for {num_classes} classes; use at most "
                          f"{num_classes} (one class per group)")
    b = _Builder()
    b.add(Node(INGEST, INGEST, cfg.data.pinned(), {}, "flow"))  # kind artifact: keyed on its digest
    if cfg.core_set is not None and cfg.core_set.methods:
        b.add(Node(FEATURES, FEATURES, cfg.prune_config(cfg.core_set), {"dataset": INGEST}, "flow"))
    needs = cfg.method_needs()
    if needs & {"latents", "vae", "denoiser"}:
        b.add(Node(VAE, VAE, cfg.vae, {"dataset": INGEST}, "flow"))
        b.add(Node(LATENTS, LATENTS, cfg.encode, {"dataset": INGEST, "vae": VAE}, "flow"))
    if "denoiser" in needs:
        b.add(Node(DENOISER, DENOISER, cfg.denoiser, {"latents": LATENTS}, "flow"))
    teacher = None
    if cfg.soft_labels is not None and cfg.soft_labels.methods:
        teacher = b.add(Node(TEACHER, TEACHER, cfg.soft_labels.teacher, {"dataset": INGEST}, "flow"))
    soft = set(cfg.soft_labels.methods) if teacher else set()  # type: ignore[union-attr]
    baselines: dict[tuple[int, bool], str] = {}

    def add_baselines(ipc: int) -> None:
        if not cfg.random_baseline or (ipc, False) in baselines:
            return
        baselines[ipc, False] = b.baseline(f"baseline/ipc{ipc}", BaselineEvalConfig(eval=cfg.evaluation, ipc=ipc),
                                           None)
        if teacher is not None:
            baselines[ipc, True] = b.baseline(f"baseline/ipc{ipc}/soft", BaselineEvalConfig(
                eval=cfg.soft_eval(), ipc=ipc, teacher=True), teacher)

    def distill(name: str, ipc: int) -> str:
        method, mcfg = get_method(name), cfg.method_config(name, ipc)
        inputs = {"dataset": INGEST}
        if cfg.core_set is not None and name in cfg.core_set.methods:
            inputs["features"] = FEATURES
        inputs.update({need: NEED_NODES[need] for need in sorted(method.needs_for(mcfg))})
        label = f"distill/{name}/ipc{ipc}"
        if cfg.class_groups == 1 or not method.class_groups or num_classes is None:
            return b.add(Node(label, method.stage, mcfg, inputs))
        parts = {}
        for i, part in enumerate(group_configs(mcfg, num_classes, cfg.class_groups)):  # type: ignore[arg-type]
            lo, hi = part.classes[0], part.classes[-1]  # type: ignore[index]
            parts[numbered(PART, i)] = b.add(Node(f"{label}/classes{lo}-{hi}", method.stage, part, inputs))
        return b.add(Node(label, "merge", MergeConfig(parts=len(parts)), {"dataset": INGEST, **parts}))

    def evaluate_rows(label: str, ipc: int, set_id: str, name: str, pruned_from: tuple[str, int] | None) -> None:
        hard = b.evaluation(f"evaluate/{label}/ipc{ipc}", set_id, EvaluateConfig(eval=cfg.evaluation), None)
        b.rows.append(_row(label, ipc, hard, set_id, baselines.get((ipc, False)), hard, pruned_from))
        if name in soft:
            ev = b.evaluation(f"evaluate/{label}+soft/ipc{ipc}", set_id,
                              EvaluateConfig(eval=cfg.soft_eval(), teacher=True), teacher)
            src = (f"{pruned_from[0]}+soft", pruned_from[1]) if pruned_from else None
            b.rows.append(_row(f"{label}+soft", ipc, ev, set_id, baselines.get((ipc, True)), hard, src))

    for ipc in cfg.ipcs:
        add_baselines(ipc)
    unpruned: dict[tuple[str, int], str] = {}
    for ipc in cfg.ipcs:
        for name in cfg.methods:
            sets: list[tuple[str, str, tuple[str, int] | None]] = [(name, distill(name, ipc), None)]
            if cfg.prune is not None and name in cfg.prune.methods:
                big_ipc = cfg.post_prune_ipc(ipc)
                big = distill(name, big_ipc)
                pruned = b.add(Node(f"prune/{name}/ipc{big_ipc}->{ipc}", "prune", cfg.prune_config(cfg.prune),
                                    {"synthetic": big}))
                sets.append((f"{name}+prune", pruned, (name, big_ipc)))
                if big_ipc not in cfg.ipcs:  # else row (name, big_ipc) is this very set, distilled directly
                    unpruned.setdefault((name, big_ipc), big)
            for label, set_id, src in sets:
                evaluate_rows(label, ipc, set_id, name, src)
    for (name, big_ipc), set_id in unpruned.items():
        add_baselines(big_ipc)  # so the unpruned row has an IOR of its own size
        evaluate_rows(name, big_ipc, set_id, name, None)
    return _with_report(b, cfg.name, cfg.full_data_acc)


def build_evaluate_plan(cfg: RunConfig, *, ipc: int, label: str = "external") -> Plan:
    """Evaluate a given set (node ``synthetic``) on a given dataset (node ``ingest``) under ``cfg``'s
    recipe, beside the random baseline of ``ipc`` stored images per class. The executor supplies the two
    given nodes' refs; they are not part of :attr:`Plan.nodes`."""
    b = _Builder()
    base = None
    if cfg.random_baseline:
        base = b.baseline(f"baseline/ipc{ipc}", BaselineEvalConfig(eval=cfg.evaluation, ipc=ipc), None)
    ev = b.evaluation(f"evaluate/{label}/ipc{ipc}", "synthetic", EvaluateConfig(eval=cfg.evaluation), None)
    b.rows.append(_row(label, ipc, ev, "synthetic", base, ev, None))
    return _with_report(b, f"{cfg.name}-evaluate", cfg.full_data_acc)


def _row(label: str, ipc: int, evaluation: str, synthetic: str, baseline: str | None, hard: str,
         pruned_from: tuple[str, int] | None) -> ReportRow:
    return ReportRow(label=label, ipc=ipc, evaluation=evaluation, synthetic=synthetic, baseline=baseline,
                     hard=hard, pruned_from=pruned_from)


def _with_report(b: _Builder, run_name: str, full_data_acc: float | None) -> Plan:
    """Append the report node: its inputs are every node a row names, under the node's id."""
    names: dict[str, str] = {}
    for r in b.rows:
        for nid in (r.evaluation, r.synthetic, r.baseline, r.hard):
            if nid is not None:
                names.setdefault(nid, nid)
    report = ReportConfig(run=run_name, full_data_acc=full_data_acc, rows=tuple(b.rows))
    b.add(Node(REPORT, REPORT, report, names, "flow"))
    return Plan(name=run_name, nodes=tuple(b.nodes.values()), rows=tuple(b.rows))


__all__ = ["STAGES", "Node", "Plan", "build_evaluate_plan", "build_plan", "expand_force"]
