"""Distilled-set quality on Fashion-MNIST: every method vs random and herding, one evaluation recipe.

For each IPC, each method produces a set from the same real data; every set (and ``num_eval`` random
real subsets) is trained on by fresh ConvNets under the SAME recipe and tested on the 10k test images.
IOR (DD-Ranking) is computed per round against the random subset trained from the same network seed
(:func:`ddcore.evaluate.metrics.paired_scores`). Results are
accuracy fractions as mean ± std over the recorded seeds.

The default budget fits a 2-core CPU (stated in the JSON): ConvNet-3 width 64 for distilling and
evaluating, short distillation runs and a shortened DM-protocol recipe. ``--budget paper`` selects the
published settings (20k iterations, width 128, 1000 epochs, 5 evaluations) for a GPU.

Usage: ``python -m benchmarks.quality [--ipcs 10] [--methods random,herding,dm,hdd,ncfm] [--budget cpu]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import write_json
from ddcore.data import ArtifactSampler, IngestConfig, ingest, open_artifact
from ddcore.distill.baselines import select_baseline
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.distill.loop import distill
from ddcore.evaluate.metrics import by_seed, paired_scores
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import evaluate_set

BUDGETS = {
    "cpu": {"width": 64, "iterations": {"dm": 400, "hdd": 400, "ncfm": 300}, "batch_real": 64, "num_freqs": 256,
            "eval_epochs": 300, "num_eval": 3, "vae_epochs": 2, "vae_per_class": 500},
    "smoke": {"width": 16, "iterations": {"dm": 5, "hdd": 5, "ncfm": 5}, "batch_real": 16, "num_freqs": 32,
              "eval_epochs": 3, "num_eval": 2, "vae_epochs": 1, "vae_per_class": 20},
    "paper": {"width": 128, "iterations": {"dm": 20000, "hdd": 20000, "ncfm": 20000}, "batch_real": 256,
              "num_freqs": 4096, "eval_epochs": 1000, "num_eval": 5, "vae_epochs": 30, "vae_per_class": 6000},
}


class LatentCache:
    """A small VAE trained once on a seeded subset, and every train image's latents per class."""

    def __init__(self, sampler: ArtifactSampler, budget: dict, device: str) -> None:
        import numpy as np

        from ddcore.latent.vae import VAEConfig, build_vae, encode, train_vae

        self.cfg = VAEConfig(epochs=budget["vae_epochs"], batch_size=128, block_out_channels=(16, 32, 32),
                             norm_num_groups=16, mid_block_attention=False,
                             max_train_per_class=budget["vae_per_class"])
        c, h, _ = sampler.image_shape
        rng = np.random.default_rng(0)
        keep = [np.sort(rng.permutation(sampler.class_size(k))[: budget["vae_per_class"]])
                for k in range(sampler.num_classes)]
        sub = ArtifactSampler(sampler.artifact, "train", keep=keep)
        t0 = time.perf_counter()
        self.vae = build_vae(self.cfg, c, h).to(device)
        train_vae(self.vae, sub, self.cfg)
        self.vae_seconds = time.perf_counter() - t0
        m = torch.tensor(sampler.mean).view(1, -1, 1, 1)
        s = torch.tensor(sampler.std).view(1, -1, 1, 1)
        self.latents = []
        for k in range(sampler.num_classes):
            x = sampler.get(k, torch.arange(sampler.class_size(k)))
            self.latents.append(encode(self.vae, (x * s + m).clamp(0, 1).to(device)).cpu())
        self.sampler = sampler

    def distill(self, variant: str, ipc: int):
        from ddcore.latent.ddoq import DDOQConfig, distill_ddoq

        cfg = DDOQConfig(ipc=ipc, variant=variant)
        return distill_ddoq(lambda c: iter(self.latents[c].split(1024)), self.vae, cfg,
                            num_classes=self.sampler.num_classes, mean=self.sampler.mean, std=self.sampler.std,
                            image_size=self.sampler.image_shape[1]).synthetic


def make_set(method: str, sampler: ArtifactSampler, ipc: int, budget: dict, device: str,
             latents: LatentCache | None = None):
    w = budget["width"]
    if method in ("random", "herding"):
        return select_baseline(sampler, BaselineConfig(method=method, ipc=ipc, width=w, seed=0), device=device)
    if method in ("dm", "hdd", "ncfm"):
        kw: dict = dict(method=method, ipc=ipc, iterations=budget["iterations"][method], width=w,
                        batch_real=budget["batch_real"], checkpoint_every=0, log_every=50)
        if method == "ncfm":
            kw.update(lr_img=0.01, init="real", ncfm={"num_freqs": budget["num_freqs"], "factor": 1})
        return distill(sampler, DistillConfig(**kw), device=device)
    if method in ("ddoq", "d4m") and latents is not None:
        return latents.distill(method, ipc)
    raise SystemExit(f"unknown method {method}")


def fashion_mnist(data: str | None) -> tuple[tempfile.TemporaryDirectory, ArtifactSampler, tuple]:
    """Fashion-MNIST as an artifact (``data``, or ingested into a temporary folder kept alive by the returned
    handle): a cached train sampler and the test split ``(images, labels)``."""
    tmp = tempfile.TemporaryDirectory()
    uri = data or str(Path(tmp.name) / "fmnist")
    if data is None:
        ingest(IngestConfig.from_mapping({"source": {"kind": "fashion_mnist"}}), uri)
    art = open_artifact(uri)
    return tmp, ArtifactSampler(art, "train", cache=True), art.load_split("test")


def write_results(args: argparse.Namespace, budget: dict, ecfg: EvalConfig, rows: list[dict], *,
                  complete: bool) -> list[str]:
    """Write the JSON and markdown table of ``rows`` to ``args.out`` (rewritten after every row)."""
    out = {"benchmark": "quality", "dataset": "fashion-mnist", "budget": args.budget, "budget_settings": budget,
           "eval_protocol": ecfg.label, "eval_config": ecfg.model_dump(mode="json"), "device": args.device,
           "complete": complete, "rows": rows}
    write_json(args.out, out)
    md = ["| IPC | method | acc (%) | random (%) | IOR (pts) |", "|---|---|---|---|---|"]
    md += [f"| {r['ipc']} | {r['method']} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} | "
           f"{100 * r['random_mean']:.1f} ± {100 * r['random_std']:.1f} | {100 * r['ior']:+.1f} |" for r in rows]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ipcs", default="10")
    ap.add_argument("--methods", default="random,herding,dm,hdd,ncfm,ddoq,d4m")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=None, help="existing Fashion-MNIST artifact (else ingested to a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    ap.add_argument("--iterations", type=int, default=None,
                    help="override the budget's distillation iterations (every method); recorded in the JSON")
    ap.add_argument("--eval-epochs", type=int, default=None,
                    help="override the budget's evaluation epochs (every row, baselines included); recorded")
    args = ap.parse_args()
    budget = dict(BUDGETS[args.budget])
    if args.iterations is not None:
        budget["iterations"] = {m: args.iterations for m in budget["iterations"]}
    if args.eval_epochs is not None:
        budget["eval_epochs"] = args.eval_epochs
    tmp, sampler, (test_x, test_y) = fashion_mnist(args.data)
    ecfg = EvalConfig.dm_protocol(epochs=budget["eval_epochs"], width=budget["width"], num_eval=budget["num_eval"])
    rows = []
    latents = LatentCache(sampler, budget, args.device) if {"ddoq", "d4m"} & set(args.methods.split(",")) else None
    for ipc in [int(v) for v in args.ipcs.split(",")]:
        rdm_accs, rdm_seeds = [], []
        for i in range(ecfg.num_eval):
            r = select_baseline(sampler, BaselineConfig(method="random", ipc=ipc, seed=100 + i))
            rdm = evaluate_set(r, test_x, test_y, config=ecfg.model_copy(update={"num_eval": 1, "seed": ecfg.seed + i}),
                               device=args.device)
            rdm_accs += rdm.accs
            rdm_seeds += rdm.seeds
        rname = f"random/ipc{ipc}"
        rdm_by_seed = by_seed(rdm_seeds, rdm_accs, rname)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            sset = make_set(method, sampler, ipc, budget, args.device, latents)
            t_set = time.perf_counter() - t0
            res = evaluate_set(sset, test_x, test_y, config=ecfg, device=args.device)
            scores = paired_scores(by_seed(res.seeds, res.accs, method), baseline=rdm_by_seed,
                                   names=(method, rname, method))
            rm, rs, im, istd = scores.random_mean, scores.random_std, scores.ior, scores.ior_std
            rows.append({"ipc": ipc, "method": method, "acc_mean": res.mean, "acc_std": res.std, "accs": res.accs,
                         "eval_seeds": res.seeds, "random_mean": rm, "random_std": rs, "random_accs": rdm_accs,
                         "ior": im, "ior_std": istd, "distill_seconds": t_set, "n_images": int(sset.images.shape[0]),
                         "weighted": sset.weights is not None})
            write_results(args, budget, ecfg, rows, complete=False)  # a long run keeps what it finished
            print(f"ipc {ipc:>3} {method:<8} acc {100 * res.mean:5.1f} ± {100 * res.std:4.1f}   random "
                  f"{100 * rm:5.1f} ± {100 * rs:4.1f}   IOR {100 * im:+5.1f}   ({t_set:.0f}s)", flush=True)
    md = write_results(args, budget, ecfg, rows, complete=True)
    print("\n".join(md))


if __name__ == "__main__":
    main()
