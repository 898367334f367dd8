"""Evaluation stages: one task per round (seed), then an aggregate per set.

``evaluate_round`` trains a fresh network on a synthetic set under the recipe with seed
``eval.seed + index`` and tests it on the real test split; ``baseline_round`` does the same on a random
real subset of the same IPC. The rounds fan out as separate tasks (one per GPU), each cached on its
own, so a killed evaluation resumes at the rounds not yet finished. ``evaluate`` / ``baseline``
aggregate the rounds (inputs ``round-000`` ...) into ``results.json``: per-round accuracies (fractions),
seeds, mean ± std and the protocol label. No wall-clock time is written, so a recomputed result has
the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact
from ddcore.data.synthetic_io import load_synthetic
from ddcore.errors import DataError
from ddcore.evaluate.metrics import summarize
from ddcore.evaluate.suite import random_subset
from ddcore.evaluate.test_data import load_test_split
from ddcore.evaluate.train import EpochCheckpoint, EvalRun, train_and_evaluate
from tasks.configs import BaselineEvalConfig, BaselineRoundConfig, EvalRoundConfig, EvaluateConfig
from tasks.runtime.refs import ArtifactRef, numbered, numbered_inputs
from tasks.runtime.stage import StageContext, make_stage_task

if TYPE_CHECKING:
    import torch

    from ddcore.evaluate.protocol import EvalConfig

RESULTS = "results.json"
ROUND = "round"
"""Prefix of the aggregate stages' inputs: ``round-000``, ``round-001``, ..."""


def test_split(data: Any) -> str:
    """The held-out split to test on: ``test``, else ``val`` (ImageNet-style folders)."""
    for split in ("test", "val"):
        if split in data.meta.counts:
            return split
    raise DataError(f"dataset {data.uri} has no test or val split; ingest one (e.g. --test-fraction 0.1)")


def check_evaluation_inputs(synthetic: str, dataset: str) -> tuple[DatasetArtifact, DatasetArtifact]:
    """Open and verify the set and the dataset, and check that they fit together, before any stage runs.

    Raises:
        ArtifactError: either is missing, not an artifact folder, or fails verification.
        DataError: the dataset has no test (or val) split, or the two differ in classes or image shape.
    """
    syn, data = open_artifact(synthetic), open_artifact(dataset)
    test_split(data)
    if syn.meta.num_classes != data.meta.num_classes:
        raise DataError(f"synthetic set {synthetic} has {syn.meta.num_classes} classes but dataset {dataset} has "
                        f"{data.meta.num_classes}; pass --data the dataset the set was made from")
    if tuple(syn.meta.image_shape) != tuple(data.meta.image_shape):
        shapes = ["x".join(str(v) for v in a.meta.image_shape) for a in (syn, data)]
        raise DataError(f"synthetic set {synthetic} holds {shapes[0]} images but dataset {dataset} holds {shapes[1]}; "
                        "pass --data the dataset the set was made from")
    return syn, data


def _run_dict(run: Any) -> dict:
    d = asdict(run)
    # no wall-clock times: the output must be the same bytes whenever the same evaluation is recomputed
    return {k: d[k] for k in ("acc", "seed", "selected_epoch", "protocol", "num_train")}


def write_results(out: str, doc: dict) -> None:
    """Write ``doc`` as the stage output's ``results.json`` (sorted keys: the same doc gives the same bytes)."""
    fs, path = fsio.get_fs(out)
    fs.makedirs(path, exist_ok=True)
    with fsio.open_write(fs, fsio.join(path, RESULTS)) as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True).encode())


def read_results(uri: str) -> dict:
    """The ``results.json`` of an evaluation, baseline or report output."""
    fs, path = fsio.get_fs(uri)
    return json.loads(fs.cat_file(fsio.join(path, RESULTS)))


def _aggregate(inputs: dict[str, ArtifactRef], num_eval: int, eval_digest: str) -> tuple[list[dict], list[float]]:
    rounds = [read_results(r.uri) for r in numbered_inputs(inputs, ROUND, num_eval, "evaluation")]
    for i, r in enumerate(rounds):
        if r.get("index") != i or r.get("eval_config_digest") != eval_digest:
            raise DataError(f"{numbered(ROUND, i)} was evaluated under another recipe or index; run the flow again")
        r.pop("index"), r.pop("eval_config_digest"), r.pop("kind", None)
    return rounds, [r["acc"] for r in rounds]


def _checkpoint(ctx: StageContext, every: int) -> EpochCheckpoint | None:
    return EpochCheckpoint(ctx.checkpoint_dir, every) if every else None


def _teacher(inputs: dict[str, ArtifactRef], wanted: bool, num_classes: int, image_shape: tuple[int, ...],
             device: str) -> Any:
    """The soft-label teacher network when the config asks for it (input ``teacher``), else ``None``."""
    if not wanted:
        return None
    if "teacher" not in inputs:
        raise DataError("the evaluation config asks for a soft-label teacher but no 'teacher' input was given; "
                        "add a soft_labels section to the run config")
    from ddcore.evaluate.teacher import load_teacher

    return load_teacher(inputs["teacher"].uri, device, num_classes=num_classes,
                        image_shape=image_shape)  # type: ignore[arg-type]


def _progress(ctx: StageContext) -> Callable[[int, int, float], None]:
    """Training progress of an evaluation network (pass ``ep`` of ``passes``, 0-based) for ``ctx.progress``."""
    return lambda ep, passes, loss: ctx.progress(ep + 1, passes, "epochs", loss=loss)


def _train_round(data: DatasetArtifact, x: torch.Tensor, y: torch.Tensor, inputs: dict[str, ArtifactRef],
                 spec: EvaluateConfig | BaselineEvalConfig, i: int, num_classes: int, ctx: StageContext,
                 **labels: Any) -> EvalRun:
    """Round ``i`` of an evaluation spec (``spec.eval``, ``spec.teacher``, ``spec.checkpoint_every``): a fresh
    network trained on ``x, y`` (``labels``: weights / soft labels) and tested on the held-out split."""
    test_x, test_y = load_test_split(data, test_split(data), memory_mb=spec.eval.test_memory_mb,
                                     workers=spec.eval.loader_workers)
    teacher = _teacher(inputs, spec.teacher, num_classes, tuple(test_x.shape[1:]), ctx.device)
    return train_and_evaluate(x, y, test_x, test_y, config=spec.eval, seed=spec.eval.seed + i,
                              num_classes=num_classes, teacher=teacher, device=ctx.device,
                              checkpoint=_checkpoint(ctx, spec.checkpoint_every), progress=_progress(ctx), **labels)


def _finish_round(out: str, ctx: StageContext, i: int, doc: dict, t0: float) -> dict:
    write_results(out, doc)
    ctx.log_metrics(i, {"acc": doc["acc"]})
    return {"acc": doc["acc"], "seconds": time.perf_counter() - t0}


def evaluate_round_stage(inputs: dict[str, ArtifactRef], config: EvalRoundConfig, out: str,
                         ctx: StageContext) -> dict:
    """Round ``config.index``: train a fresh network on the synthetic set, test on the real test split."""
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    ev, i = config.evaluate, config.index
    sset = load_synthetic(inputs["synthetic"].uri)
    run = _train_round(data, sset.images, sset.labels, inputs, ev, i, sset.num_classes, ctx,
                       weights=sset.weights if ev.use_weights else None,
                       soft_labels=sset.soft_labels if ev.use_soft_labels else None)
    doc = {"kind": "synthetic-round", "index": i, "eval_config_digest": ev.eval.digest(), **_run_dict(run)}
    return _finish_round(out, ctx, i, doc, t0)


def baseline_round_stage(inputs: dict[str, ArtifactRef], config: BaselineRoundConfig, out: str,
                         ctx: StageContext) -> dict:
    """Round ``config.index`` of the random baseline: a seeded random real subset, a fresh network."""
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    bc, i, k = config.baseline, config.index, data.meta.num_classes
    x, y = random_subset(ArtifactSampler(data, "train"), [bc.ipc] * k, seed=bc.subset_seed + i)
    run = _train_round(data, x, y, inputs, bc, i, k, ctx)
    doc = {"kind": "random-round", "index": i, "eval_config_digest": bc.eval.digest(), **_run_dict(run),
           "subset_seed": bc.subset_seed + i}
    return _finish_round(out, ctx, i, doc, t0)


def _aggregate_stage(inputs: dict[str, ArtifactRef], ec: EvalConfig, out: str, ctx: StageContext, doc: dict) -> dict:
    """Aggregate the rounds (inputs ``round-000`` ...) into ``results.json``: ``doc`` plus the rounds' summary."""
    rounds, accs = _aggregate(inputs, ec.num_eval, ec.digest())
    mean, std = summarize(accs)
    write_results(out, {**doc, "protocol": ec.label, "eval_config_digest": ec.digest(), "rounds": rounds, "accs": accs,
                 "acc_mean": mean, "acc_std": std})
    ctx.log_metrics(0, {"acc_mean": mean, "acc_std": std})
    return {"acc_mean": mean, "acc_std": std, "n_eval": len(accs)}


def evaluate_stage(inputs: dict[str, ArtifactRef], config: EvaluateConfig, out: str, ctx: StageContext) -> dict:
    """Aggregate the rounds (inputs ``round-000`` ...) of one synthetic set into ``results.json``."""
    syn = inputs["synthetic"]
    sset = load_synthetic(syn.uri)
    return _aggregate_stage(inputs, config.eval, out, ctx, {
        "kind": "synthetic", "synthetic": syn.uri, "synthetic_digest": syn.sha256, "method": sset.method,
        "ipc": sset.ipc, "n_images": int(sset.images.shape[0]), "labels": "teacher" if config.teacher else "set"})


def baseline_stage(inputs: dict[str, ArtifactRef], config: BaselineEvalConfig, out: str, ctx: StageContext) -> dict:
    """Aggregate the random-baseline rounds (inputs ``round-000`` ...) of one IPC into ``results.json``."""
    return _aggregate_stage(inputs, config.eval, out, ctx, {
        "kind": "random", "ipc": config.ipc, "labels": "teacher" if config.teacher else "hard"})


EVALUATE_ROUND = make_stage_task("evaluate_round", evaluate_round_stage, "eval", retries=1, tags=("gpu",))
BASELINE_ROUND = make_stage_task("baseline_round", baseline_round_stage, "eval", retries=1, tags=("gpu",))
EVALUATE = make_stage_task("evaluate", evaluate_stage, "eval", retries=1)
BASELINE = make_stage_task("baseline", baseline_stage, "eval", retries=1)
