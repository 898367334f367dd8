"""The work of ``ddflow run`` done by calling ddcore directly: no Prefect, no MLflow, no artifact store.

:func:`run_direct` follows ``flows.distill.run_config`` stage by stage and, inside each stage, the
body of the stage function in ``tasks/*.py`` (same ddcore calls, same configs from
:class:`flows.config.RunConfig`, same seeds), so its accuracies must equal the flow's
``summary.json``. Each stage writes what the stage function writes (dataset artifact, VAE folder,
latent shards, synthetic sets) into plain folders under ``root``; distillation and VAE checkpoints go
to a checkpoint folder per stage, as in the flow. Evaluation is one round per seed, each round
opening the dataset, loading the test split and the set as the ``evaluate_round`` /
``baseline_round`` stages do (the seconds spent loading are reported as ``load_seconds``: a
monolithic script would load once).

Left out, because they exist only for the orchestration: the store (stage keys, locks, ``ref.json``,
digest verification, atomic publish, the round and aggregate ``results.json`` files), MLflow (runs,
metrics, the synthetic-set grid PNGs the stages build only to log them), Prefect (tasks, futures,
result persistence, the temporary API server), the report's plot (its table is computed), and the
class-group fan-out (``class_groups`` > 1: parts + merge give the same set as one distillation, which
is what runs here). A stage the flow finds cached inside the run (a post-pruning distillation at an IPC
also run directly, two methods giving the same set) is computed once here too. Everything runs on one
device (``assign_devices(1)``); on a multi-GPU machine the flow spreads branches over GPUs and this
path does not, so compare on CPU or one GPU.

Prefect-free on purpose: importing this module never imports prefect or mlflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ddcore.config import StageConfig, apply_overrides, load_yaml
from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data.ingest import ingest
from ddcore.data.synthetic_io import load_synthetic, save_synthetic
from ddcore.distill.baselines import select_baseline
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.distill.loop import distill
from ddcore.errors import DataError
from ddcore.evaluate.metrics import by_seed, paired_scores, summarize
from ddcore.evaluate.suite import random_subset
from ddcore.evaluate.train import train_and_evaluate
from ddcore.prune.core import prune_real, prune_synthetic
from flows.config import LATENT_METHODS, RunConfig
from flows.runners import assign_devices
from tasks.configs import BaselineEvalConfig, EvaluateConfig


def resolve_config(config_path: str, overrides: list[str] | None = None) -> RunConfig:
    """What ``flows.distill.load_config`` returns, without importing prefect (same digest)."""
    data = apply_overrides(load_yaml(config_path), overrides or [])
    return RunConfig.from_mapping(data, where=str(config_path))


def held_out_split(data: Any) -> str:
    """The held-out split the evaluation stages test on: ``test``, else ``val``."""
    for split in ("test", "val"):
        if split in data.meta.counts:
            return split
    raise DataError(f"dataset {data.uri} has no test or val split; ingest one")


class DirectRun:
    """Stage bodies as methods; outputs under ``root/<stage>/<n>``, checkpoints under ``root/_ckpt``."""

    def __init__(self, cfg: RunConfig, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self.stages: list[dict[str, Any]] = []
        self.memo: dict[tuple, Any] = {}
        self.count = 0
        self.load_s = 0.0  # opening the dataset / loading the test split and sets in evaluation rounds

    def _dirs(self, stage: str) -> tuple[Path, Path]:
        self.count += 1
        out, ckpt = self.root / stage / f"{self.count:03d}", self.root / "_ckpt" / stage / f"{self.count:03d}"
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        return out, ckpt

    def step(self, label: str, key: tuple, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once per ``key`` (a repeat costs nothing, as a cached stage in the flow) and time it."""
        t0 = time.perf_counter()
        cached = key in self.memo
        if not cached:
            self.memo[key] = fn()
        self.stages.append({"name": label, "cached": cached, "seconds": round(time.perf_counter() - t0, 3)})
        return self.memo[key]

    # -- stages (bodies of tasks/*.py) -------------------------------------------------------
    def ingest(self) -> str:
        out, _ = self._dirs("ingest")
        ingest(self.cfg.data, out, overwrite=True)
        return str(out)

    def features(self, data: str, device: str) -> list:
        sampler = ArtifactSampler(open_artifact(data), "train")
        return prune_real(sampler, self.cfg.prune_config(self.cfg.core_set), device=device)  # type: ignore[arg-type]

    def train_vae(self, data: str, device: str) -> str:
        from ddcore.latent.stage import train_or_load_vae

        out, ckpt = self._dirs("train_vae")
        train_or_load_vae(data, self.cfg.vae, out, checkpoint_dir=ckpt, device=device, log=None)
        return str(out)

    def encode(self, data: str, vae: str, device: str) -> str:
        from ddcore.latent.stage import encode_latents_stage

        out, ckpt = self._dirs("encode_latents")
        enc = self.cfg.encode
        encode_latents_stage(data, vae, out, batch_size=enc.batch_size, dtype=enc.dtype, device=device,
                             checkpoint_dir=ckpt)
        return str(out)

    def distill(self, data: str, config: StageConfig, keep: list | None, latents: dict[str, str],
                device: str) -> str:
        out, ckpt = self._dirs("distill")
        if not isinstance(config, DistillConfig | BaselineConfig):
            from ddcore.latent.stage import ddoq_stage

            ddoq_stage(data, latents["latents"], latents["vae"], config, out, device=device)  # type: ignore[arg-type]
            return str(out)
        art = open_artifact(data)
        sampler = ArtifactSampler(art, "train", keep=keep)
        if isinstance(config, DistillConfig):
            sset = distill(sampler, config, device=device, checkpoint_dir=ckpt, log=None)
        else:
            sset = select_baseline(sampler, config, device=device)
        sset.extra.update(dataset_digest=art.digest, core_set="direct" if keep is not None else None)
        save_synthetic(sset, out, classes=art.meta.classes, overwrite=True,
                       source={"name": f"{art.meta.name}-{sset.method}-ipc{config.ipc}", "kind": "distill",
                               "dataset": data, "dataset_digest": art.digest})
        return str(out)

    def prune(self, synthetic: str, device: str) -> str:
        out, _ = self._dirs("prune")
        art = open_artifact(synthetic)
        sset = load_synthetic(synthetic)
        pruned = prune_synthetic(sset, self.cfg.prune_config(self.cfg.prune), device=device)  # type: ignore[arg-type]
        pruned.extra.update(pruned_from_digest=art.digest)
        save_synthetic(pruned, out, classes=art.meta.classes, overwrite=True,
                       source={"name": f"{art.meta.name}-pruned", "kind": "prune", "synthetic": synthetic,
                               "synthetic_digest": art.digest})
        return str(out)

    def _test_split(self, data: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        art = open_artifact(data)
        test_x, test_y = art.load_split(held_out_split(art))
        self.load_s += time.perf_counter() - t0
        return art, test_x, test_y

    def evaluate_round(self, data: str, synthetic: str, config: EvaluateConfig, i: int, device: str) -> float:
        _, test_x, test_y = self._test_split(data)
        t0 = time.perf_counter()
        sset = load_synthetic(synthetic)
        self.load_s += time.perf_counter() - t0
        ec = config.eval
        return train_and_evaluate(sset.images, sset.labels, test_x, test_y, config=ec, seed=ec.seed + i,
                                  num_classes=sset.num_classes, weights=sset.weights if config.use_weights else None,
                                  soft_labels=sset.soft_labels if config.use_soft_labels else None,
                                  device=device).acc

    def baseline_round(self, data: str, config: BaselineEvalConfig, i: int, device: str) -> float:
        art, test_x, test_y = self._test_split(data)
        k = art.meta.num_classes
        x, y = random_subset(ArtifactSampler(art, "train"), [config.ipc] * k, seed=config.subset_seed + i)
        return train_and_evaluate(x, y, test_x, test_y, config=config.eval, seed=config.eval.seed + i, num_classes=k,
                                  device=device).acc


def _digest(config: StageConfig) -> str:
    return f"{type(config).__name__}:{config.digest()}"


def run_direct(cfg: RunConfig, root: Path) -> dict[str, Any]:
    """The flow's plan (``flows.distill.run_config``) on :class:`DirectRun`; returns rows and stage times.

    As in the flow, the shared stages run in the calling thread and the branches (baselines, distill,
    prune, evaluation rounds) in one worker thread (the thread runner has one worker without GPUs).
    Where does not change results, but it changes speed on a loaded machine (OpenMP threads of the
    main thread suffer more from oversubscription), so the placement is kept equal.
    """
    t_start = time.perf_counter()
    run = DirectRun(cfg, root)
    device = assign_devices(1)[0] if cfg.device == "auto" else cfg.device
    data = run.step("ingest", ("ingest",), run.ingest)
    keep = None
    if cfg.core_set is not None and cfg.core_set.methods:
        keep = run.step("extract_features", ("features",), lambda: run.features(data, device))
    latents: dict[str, str] = {}
    if any(m in LATENT_METHODS for m in cfg.methods):
        vae = run.step("train_vae", ("vae",), lambda: run.train_vae(data, device))
        lat = run.step("encode_latents", ("latents",), lambda: run.encode(data, vae, device))
        latents = {"vae": vae, "latents": lat}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct-branches") as pool:
        rows = pool.submit(_branches, run, data, keep, latents, device).result()
    return {"config_digest": cfg.digest(), "results": rows, "stages": run.stages, "device": device,
            "torch_threads": torch.get_num_threads(), "load_seconds": round(run.load_s, 3),
            "seconds": round(time.perf_counter() - t_start, 3)}


def _branches(run: DirectRun, data: str, keep: list | None, latents: dict[str, str], device: str) -> list[dict]:
    """Baselines, then per (IPC, method): distill [-> big distill -> prune] -> evaluation rounds; then the
    unpruned big sets whose IPC is not in ``ipcs`` (rows ``<method>`` at that IPC)."""
    cfg = run.cfg

    def rounds(label: str, key: tuple, n: int, fn: Callable[[int], float]) -> list[float]:
        accs = [run.step(f"{label}/round{i}", (*key, i), lambda i=i: fn(i)) for i in range(n)]
        return run.step(label, (*key, "aggregate"), lambda: accs)

    baselines: dict[int, list[float]] = {}

    def add_baseline(ipc: int) -> None:
        if not cfg.random_baseline or ipc in baselines:
            return
        bcfg = BaselineEvalConfig(eval=cfg.evaluation, ipc=ipc)
        baselines[ipc] = rounds(f"baseline/ipc{ipc}", ("baseline", _digest(bcfg)), bcfg.eval.num_eval,
                                lambda i: run.baseline_round(data, bcfg, i, device))

    for ipc in cfg.ipcs:
        add_baseline(ipc)
    evaluate_cfg = EvaluateConfig(eval=cfg.evaluation)
    rows = []

    def evaluate_row(label: str, ipc: int, syn: str) -> None:
        digest = open_artifact(syn, verify="none").digest  # the flow keys evaluations on it
        accs = rounds(f"evaluate/{label}/ipc{ipc}", ("evaluate", digest), evaluate_cfg.eval.num_eval,
                      lambda i: run.evaluate_round(data, syn, evaluate_cfg, i, device))
        rows.append({**_row(label, ipc, accs, baselines.get(ipc), seed=cfg.evaluation.seed), "digest": digest})

    unpruned: dict[tuple[str, int], str] = {}
    for ipc in cfg.ipcs:
        for name in cfg.methods:
            use_keep = keep if cfg.core_set is not None and name in cfg.core_set.methods else None

            def distill_at(at: int, name: str = name, use_keep: list | None = use_keep) -> str:
                mcfg = cfg.method_config(name, at)
                return run.step(f"distill/{name}/ipc{at}", ("distill", _digest(mcfg), use_keep is not None),
                                lambda: run.distill(data, mcfg, use_keep, latents if name in LATENT_METHODS else {},
                                                    device))

            sets = {name: distill_at(ipc)}
            if cfg.prune is not None and name in cfg.prune.methods:
                big_ipc = cfg.post_prune_ipc(ipc)
                big = distill_at(big_ipc)
                sets[f"{name}+prune"] = run.step(f"prune/{name}/ipc{big_ipc}->{ipc}", ("prune", big),
                                                 lambda big=big: run.prune(big, device))
                if big_ipc not in cfg.ipcs:  # the unpruned set gets its own row, as in the flow
                    unpruned.setdefault((name, big_ipc), big)
            for label, syn in sets.items():
                evaluate_row(label, ipc, syn)
    for (name, big_ipc), syn in unpruned.items():
        add_baseline(big_ipc)  # as in the flow: the unpruned row has a baseline of its own size
        evaluate_row(name, big_ipc, syn)
    return rows


def _row(label: str, ipc: int, accs: list[float], base: list[float] | None, *, seed: int) -> dict[str, Any]:
    """The report stage's numbers for one evaluated set (``tasks.report.build_rows``): round i of the set and of
    the baseline both train from network seed ``seed + i`` (``evaluate_round``/``baseline_round``, both on
    ``cfg.evaluation``), paired by that seed in :func:`paired_scores`."""
    mean, std = summarize(accs)
    bname = f"baseline/ipc{ipc}"

    def keyed(round_accs: list[float], name: str) -> dict[int, float]:
        return by_seed([seed + i for i in range(len(round_accs))], round_accs, name)

    scores = paired_scores(keyed(accs, label), baseline=None if base is None else keyed(base, bname),
                           names=(label, bname, label))
    return {"method": label, "ipc": ipc, "acc_mean": mean, "acc_std": std, "accs": accs,
            "random_mean": scores.random_mean, "random_std": scores.random_std, "ior": scores.ior}


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: ``python -m benchmarks.direct_pipeline CONFIG ROOT OUT_JSON [--set k=v ...]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config")
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    res = run_direct(resolve_config(args.config, args.overrides), Path(args.root))
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
