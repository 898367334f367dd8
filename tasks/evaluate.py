"""Stages ``evaluate`` (a synthetic set) and ``baseline`` (random real subsets of the same IPC).

Both train fresh networks under one recipe and test them on the real test split; every finished
round is saved in the checkpoint folder, so a killed evaluation resumes at the next round. Output:
``results.json`` with per-round accuracies (fractions), seeds and the protocol label.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data import storage as fsio
from ddcore.data.synthetic_io import load_synthetic
from ddcore.errors import DataError
from ddcore.evaluate.metrics import summarize
from ddcore.evaluate.suite import random_subset
from ddcore.evaluate.train import train_and_evaluate
from tasks.configs import BaselineEvalConfig, EvaluateConfig
from tasks.refs import ArtifactRef
from tasks.stage import StageContext, make_stage_task

RESULTS = "results.json"


def test_split(data: Any) -> str:
    """The held-out split to test on: ``test``, else ``val`` (ImageNet-style folders)."""
    for split in ("test", "val"):
        if split in data.meta.counts:
            return split
    raise DataError(f"dataset {data.uri} has no test or val split; ingest one (e.g. --test-fraction 0.1)")


def _round(ckpt: str, i: int, fn: Any) -> dict:
    """Result of round ``i``: read from the checkpoint folder, or computed and saved there."""
    path = Path(ckpt) / f"round-{i:03d}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res))
    tmp.replace(path)
    return res


def _run_dict(run: Any) -> dict:
    d = asdict(run)
    # no wall-clock times: the output must be the same bytes whenever the same evaluation is recomputed
    return {k: d[k] for k in ("acc", "seed", "selected_epoch", "protocol", "num_train")}


def _write(out: str, doc: dict) -> None:
    fs, path = fsio.get_fs(out)
    fs.makedirs(path, exist_ok=True)
    with fsio.open_write(fs, fsio.join(path, RESULTS)) as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True).encode())


def read_results(uri: str) -> dict:
    fs, path = fsio.get_fs(uri)
    return json.loads(fs.cat_file(fsio.join(path, RESULTS)))


def evaluate_stage(inputs: dict[str, ArtifactRef], config: EvaluateConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    test_x, test_y = data.load_split(test_split(data))
    sset = load_synthetic(inputs["synthetic"].uri)
    ec = config.eval
    rounds = []
    for i in range(ec.num_eval):
        def go(i: int = i) -> dict:
            run = train_and_evaluate(sset.images, sset.labels, test_x, test_y, config=ec, seed=ec.seed + i,
                                     num_classes=sset.num_classes,
                                     weights=sset.weights if config.use_weights else None,
                                     soft_labels=sset.soft_labels if config.use_soft_labels else None,
                                     device=ctx.device)
            return _run_dict(run)
        rounds.append(_round(ctx.checkpoint_dir, i, go))
        ctx.log_metrics(i, {"acc": rounds[-1]["acc"]})
    accs = [r["acc"] for r in rounds]
    mean, std = summarize(accs)
    syn = inputs["synthetic"]
    _write(out, {"kind": "synthetic", "synthetic": syn.uri, "synthetic_digest": syn.sha256,
                 "method": sset.method, "ipc": sset.ipc, "n_images": int(sset.images.shape[0]),
                 "protocol": ec.label, "eval_config_digest": ec.digest(), "rounds": rounds, "accs": accs,
                 "acc_mean": mean, "acc_std": std})
    return {"acc_mean": mean, "acc_std": std, "n_eval": len(accs), "seconds": time.perf_counter() - t0}


def baseline_stage(inputs: dict[str, ArtifactRef], config: BaselineEvalConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    test_x, test_y = data.load_split(test_split(data))
    real = ArtifactSampler(data, "train")
    ec, k = config.eval, data.meta.num_classes
    rounds = []
    for i in range(ec.num_eval):
        def go(i: int = i) -> dict:
            x, y = random_subset(real, [config.ipc] * k, seed=config.subset_seed + i)
            run = train_and_evaluate(x, y, test_x, test_y, config=ec, seed=ec.seed + i, num_classes=k,
                                     device=ctx.device)
            return {**_run_dict(run), "subset_seed": config.subset_seed + i}
        rounds.append(_round(ctx.checkpoint_dir, i, go))
        ctx.log_metrics(i, {"acc": rounds[-1]["acc"]})
    accs = [r["acc"] for r in rounds]
    mean, std = summarize(accs)
    _write(out, {"kind": "random", "ipc": config.ipc, "protocol": ec.label, "eval_config_digest": ec.digest(),
                 "rounds": rounds, "accs": accs, "acc_mean": mean, "acc_std": std})
    return {"acc_mean": mean, "acc_std": std, "n_eval": len(accs), "seconds": time.perf_counter() - t0}


EVALUATE = make_stage_task("evaluate", evaluate_stage, "eval", retries=1, tags=("gpu",))
BASELINE = make_stage_task("baseline", baseline_stage, "eval", retries=1, tags=("gpu",))
