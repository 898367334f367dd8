"""Where HDD and hyperbolic pruning stand against DM: a study on a validation split of the train data.

Each class's train images are split once (seed 0) into a fit part, which every set is distilled or drawn
from, and a held-out validation part, on which every point is scored: settings are chosen here without the
test split, which only ``--split test`` (a confirmation of chosen points) reports on. Every point is trained
on by the same ``num_eval`` fresh ConvNets (seeds 0..) under one recipe, beside random fit subsets (seeds
100..) trained by the same networks, so each point also gets the paired difference to random (IOR) and,
when DM is in the same run, to DM.

Phases (``--phase``), each a list of named points (``--points`` picks some by name):

- ``hdd``: DM and HDD over the image step (λ · lr: with SGD the two only act through their product), the
  curvature parameter k, the radius clamp (10, the released code's, and none) and the iterations;
- ``prune``: the core set (the real images HDD or DM match) cut to 10/20/50 % of each class by hyperbolic
  distance to the Lorentz centroid, kept ``closest``, ``farthest`` or ``stratified`` over the distance range;
- ``post``: a set distilled at IPC ``5 × ipc`` pruned back to ``ipc`` (fraction 0.2), beside ``ipc`` directly.

Datasets: Fashion-MNIST, or scikit-learn's digits (``--dataset digits``: 1 797 real 8×8 digits, upscaled
to 28×28, 20 % held out as their test split) as a second real dataset. Writes JSON (rewritten after every
point) and prints a table. Usage:
``python -m benchmarks.hyperbolic --phase hdd [--dataset fmnist] [--ipc 10] [--points dm,hdd-l20-lr0.1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import write_json
from ddcore.data import ArtifactSampler, IngestConfig, ingest, open_artifact
from ddcore.distill.baselines import select_baseline
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.distill.loop import distill
from ddcore.evaluate.metrics import by_seed, paired_scores
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import evaluate_set
from ddcore.prune.core import PruneConfig, prune_real, prune_synthetic
from ddcore.prune.hyperbolic import keep_count

BUDGET = {"width": 32, "iterations": 150, "batch_real": 64, "eval_epochs": 100, "num_eval": 3, "dm_lr": 1.0}
"""The study budget: the demo's networks and iterations (configs/demo.yaml) with 3 evaluation networks."""
HDD_CHOICE = {"lr": 1.0, "scale": 20.0, "k": 1.0, "clamp": 10.0}
"""The HDD settings the ``prune``, ``post`` and iteration points use: the ``hdd`` phase's pick (docs/results.md,
"Hyperbolic methods: the validation study"); ``--hdd`` overrides them."""


def _hdd(name: str, lr: float, scale: float = 20.0, k: float = 1.0, clamp: float | None = 10.0, **kw) -> dict:
    return {"name": name, "method": "hdd", "lr": lr, "hdd": {"scale": scale, "k": k, "clamp_radius": clamp}, **kw}


def phase_points(phase: str) -> list[dict]:
    """The named points of a phase (see the module docstring)."""
    if phase == "hdd":
        lr = HDD_CHOICE["lr"]
        return [{"name": "random", "method": "random"}, {"name": "dm", "method": "dm"},
                *[{"name": f"dm-lr{v:g}", "method": "dm", "lr": v} for v in (0.3, 3.0, 10.0)],
                *[_hdd(f"hdd-lr{v:g}", v) for v in (0.02, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0)],
                # With the clamp active (every width-32 feature norm is ~12-13 > 10 sqrt(k) for k <= 1), k only
                # scales the loss by sqrt(k) (docs/methods.md §3.3), i.e. the step: these k make the clamp idle.
                *[_hdd(f"hdd-k{k:g}-lr{v:g}", v, k=k) for k in (10.0, 100.0) for v in (lr / 3, lr)],
                *[_hdd(f"hdd-k{k:g}-noclamp-lr{v:g}", v, k=k, clamp=None) for k in (1.0, 100.0) for v in (lr / 3, lr)],
                {"name": "dm-it400", "method": "dm", "iterations": 400},
                _hdd(f"hdd-lr{lr:g}-it400", lr, k=HDD_CHOICE["k"], clamp=HDD_CHOICE["clamp"], iterations=400)]
    if phase == "prune":
        pts = []
        for method, fractions in (("hdd", (0.1, 0.2, 0.5)), ("dm", (0.2, 0.5))):
            base = {"method": "dm"} if method == "dm" else _hdd("", **HDD_CHOICE)
            for frac in fractions:
                # "random": a seeded random subset of the same size, the control of every ranking rule
                for order in ("closest", "farthest", "stratified", "random"):
                    pts.append({**base, "name": f"{method}-core{frac:g}-{order}",
                                "core": {"fraction": frac, "order": order}})
        return pts
    if phase == "post":
        return [{**({"method": "dm"} if m == "dm" else _hdd("", **HDD_CHOICE)), "name": f"{m}-post-{order}",
                 "post": {"factor": 5, "order": order}} for m in ("dm", "hdd") for order in ("closest", "stratified")]
    raise SystemExit(f"unknown phase {phase!r}: hdd, prune or post")


def load_data(dataset: str, data: str | None, tmp: str) -> tuple:
    """``(artifact, full train sampler)`` of Fashion-MNIST (``data`` or ingested) or the upscaled digits."""
    uri = data or str(Path(tmp, dataset))
    if data is None and dataset == "fmnist":
        ingest(IngestConfig.from_mapping({"source": {"kind": "fashion_mnist"}}), uri)
    elif data is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        npz = Path(tmp, "digits.npz")
        np.savez(npz, x=(x.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy(), y=d.target.astype(np.int64))
        ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": str(npz), "name": "digits",
                                                     "test_fraction": 0.2}}), uri)
    art = open_artifact(uri)
    return art, ArtifactSampler(art, "train", cache=True)


def split_fit_val(full: ArtifactSampler, val_fraction: float, seed: int = 0) -> tuple[list, tuple]:
    """Per class, a seeded hold-out: ``(fit positions per class, (val images, val labels))``."""
    rng = np.random.default_rng(seed)
    fit, vx, vy = [], [], []
    for c in range(full.num_classes):
        perm = rng.permutation(full.class_size(c))
        nv = max(1, round(val_fraction * len(perm)))
        fit.append(np.sort(perm[nv:]))
        vx.append(full.get(c, torch.as_tensor(np.sort(perm[:nv]))))
        vy.append(torch.full((nv,), c, dtype=torch.int64))
    return fit, (torch.cat(vx), torch.cat(vy))


_LARGE: dict[str, object] = {}


def make_set(pt: dict, art, fit: list, sampler: ArtifactSampler, ipc: int, device: str):
    """The synthetic set of one point, distilled from the fit part (``sampler``: its cached sampler) or its core set."""
    w = BUDGET["width"]
    if pt["method"] in ("random", "herding"):
        return select_baseline(sampler, BaselineConfig(method=pt["method"], ipc=ipc, width=w, seed=0), device=device)
    if pt.get("core"):
        frac, order = pt["core"]["fraction"], pt["core"]["order"]
        if order == "random":
            rng = np.random.default_rng(0)
            keep = [np.sort(rng.permutation(len(f))[: keep_count(len(f), frac)]) for f in fit]
        else:
            keep = prune_real(sampler, PruneConfig(fraction=frac, order=order, width=w), device=device)
        sampler = ArtifactSampler(art, "train", keep=[f[k] for f, k in zip(fit, keep, strict=True)], cache=True)
    post = pt.get("post")
    cfg = DistillConfig(method=pt["method"], ipc=ipc * (post["factor"] if post else 1), width=w,
                        iterations=pt.get("iterations", BUDGET["iterations"]), batch_real=BUDGET["batch_real"],
                        lr_img=pt.get("lr", BUDGET["dm_lr"]), hdd=pt.get("hdd", {}), checkpoint_every=0,
                        log_every=1000)
    if post:  # the larger set is distilled once per run and pruned by each rule
        key = cfg.model_dump_json()
        if key not in _LARGE:
            _LARGE[key] = distill(sampler, cfg, device=device)
        prune = PruneConfig(fraction=1 / post["factor"], order=post["order"], width=w)
        return prune_synthetic(_LARGE[key], prune, device=device)
    return distill(sampler, cfg, device=device)


def table(paths: list[str]) -> list[str]:
    """A markdown table of the points in ``paths`` (JSON of this script), each paired by network seed with the
    ``dm`` point of a file of the same dataset, IPC, split and budget (every point is deterministic given its
    seeds: the same point run twice gives the same accuracies, so pairing across files is exact)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    key = lambda r: (r["dataset"], r["ipc"], r["split"], json.dumps(r["budget"], sort_keys=True))  # noqa: E731
    dms = {key(r): row for r in runs for row in r["rows"] if row["name"] == "dm"}
    md = ["| dataset | IPC | point | accuracy (%) | IOR (points) | vs DM (points) |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in runs:
        for row in r["rows"]:
            if (key(r), row["name"]) in seen:  # the same point in two files (e.g. dm, run for pairing)
                continue
            seen.add((key(r), row["name"]))
            dm = dms.get(key(r))
            vs = "–"
            if dm is not None and row["name"] != "dm":
                d = paired_scores(by_seed(row["eval_seeds"], row["accs"], row["name"]),
                                  baseline=by_seed(dm["eval_seeds"], dm["accs"], "dm"), names=(row["name"], "dm", "x"))
                vs = f"{100 * d.ior:+.1f} ± {100 * d.ior_std:.1f}"
            md.append(f"| {r['dataset']} | {r['ipc']} | {row['name']} | {100 * row['acc_mean']:.1f} ± "
                      f"{100 * row['acc_std']:.1f} | {100 * row['ior']:+.1f} ± {100 * row['ior_std']:.1f} | {vs} |")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--phase", default="hdd")
    ap.add_argument("--points", default=None, help="comma-separated point names of the phase (default: all)")
    ap.add_argument("--dataset", choices=("fmnist", "digits"), default="fmnist")
    ap.add_argument("--data", default=None, help="an ingested artifact of the dataset (else ingested to a temp dir)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--split", choices=("val", "test"), default="val", help="score on validation (choose) or test")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--budget", default="{}", help="JSON overrides of BUDGET (e.g. the quality budget's width)")
    ap.add_argument("--hdd", default="{}", help="JSON overrides of HDD_CHOICE (lr, scale, k, clamp) for prune/post")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", nargs="+", default=None, help="print the table of these result JSONs and exit")
    args = ap.parse_args()
    if args.table:
        print("\n".join(table(args.table)))
        return
    BUDGET.update(json.loads(args.budget))
    HDD_CHOICE.update(json.loads(args.hdd))
    points = phase_points(args.phase)
    if args.points:
        wanted = args.points.split(",")
        points = [p for p in points if p["name"] in wanted]
        if missing := set(wanted) - {p["name"] for p in points}:
            names = [p["name"] for p in phase_points(args.phase)]
            raise SystemExit(f"unknown points {sorted(missing)}; names: {names}")
    out = Path(args.out or f"benchmarks/results/hyperbolic_{args.dataset}_{args.phase}_ipc{args.ipc}_{args.split}.json")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        art, full = load_data(args.dataset, args.data, tmp)
        fit, (vx, vy) = split_fit_val(full, args.val_fraction)
        if args.split == "test":
            fit = [np.arange(full.class_size(c)) for c in range(full.num_classes)]
            vx, vy = art.load_split("test")
        ecfg = EvalConfig.dm_protocol(epochs=BUDGET["eval_epochs"], width=BUDGET["width"], num_eval=BUDGET["num_eval"])
        fit_sampler = ArtifactSampler(art, "train", keep=fit, cache=True)
        rdm_accs, rdm_seeds = [], []
        for i in range(ecfg.num_eval):
            r = select_baseline(fit_sampler, BaselineConfig(method="random", ipc=args.ipc, seed=100 + i))
            res = evaluate_set(r, vx, vy, config=ecfg.model_copy(update={"num_eval": 1, "seed": ecfg.seed + i}),
                               device=args.device)
            rdm_accs += res.accs
            rdm_seeds += res.seeds
        rdm = by_seed(rdm_seeds, rdm_accs, "random")
        rows, dm_by_seed = [], None
        for pt in points:
            t0 = time.perf_counter()
            sset = make_set(pt, art, fit, fit_sampler, args.ipc, args.device)
            seconds = time.perf_counter() - t0
            res = evaluate_set(sset, vx, vy, config=ecfg, device=args.device)
            mine = by_seed(res.seeds, res.accs, pt["name"])
            ior = paired_scores(mine, baseline=rdm, names=(pt["name"], "random", pt["name"]))
            row = {**pt, "acc_mean": res.mean, "acc_std": res.std, "accs": res.accs, "eval_seeds": res.seeds,
                   "ior": ior.ior, "ior_std": ior.ior_std, "distill_seconds": seconds,
                   "n_images": int(sset.images.shape[0]), "load_avg": os.getloadavg()[0]}
            if pt["name"] == "dm":
                dm_by_seed = mine
            if dm_by_seed is not None:
                vs_dm = paired_scores(mine, baseline=dm_by_seed, names=(pt["name"], "dm", pt["name"]))
                row.update(vs_dm=vs_dm.ior, vs_dm_std=vs_dm.ior_std)
            rows.append(row)
            print(f"{pt['name']:<32} acc {100 * res.mean:5.1f} ± {100 * res.std:3.1f}  IOR {100 * ior.ior:+5.1f}"
                  + (f"  vs DM {100 * row['vs_dm']:+5.1f} ± {100 * row['vs_dm_std']:3.1f}" if "vs_dm" in row else "")
                  + f"  ({seconds:.0f} s, load {row['load_avg']:.1f})", flush=True)
            write_json(out, {
                "benchmark": "hyperbolic", "phase": args.phase, "dataset": args.dataset, "ipc": args.ipc,
                "split": args.split, "val_fraction": args.val_fraction, "budget": BUDGET, "hdd_choice": HDD_CHOICE,
                "eval_protocol": ecfg.label, "random_accs": rdm_accs, "random_seeds": rdm_seeds,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2", "device": args.device,
                "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
