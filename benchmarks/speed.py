"""Seconds per distillation iteration and peak memory: ddflow's batched steps vs per-class loops.

Both run side by side in one process on the same real data (Fashion-MNIST when installed, else
generated 1x28x28 data), same networks, augmentation and losses; iterations alternate between the
two implementations so machine load affects both equally. Prints a table, writes JSON.

Usage: ``python benchmarks/speed.py [--iterations 5] [--ipc 10] [--batch-real 256] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from benchmarks.reference_loops import ReferenceStyleStep
from ddcore.distill.checkpoint import iteration_generator
from ddcore.distill.config import DistillConfig
from ddcore.distill.init import initial_images
from ddcore.distill.matching import MatchingStep
from ddcore.distill.ncfm import NCFMStep
from ddcore.sampling import TensorSampler


def real_sampler() -> tuple[TensorSampler, str]:
    try:
        from ddcore.data.sources.idx import FashionMNISTSource

        src = FashionMNISTSource()
        x, y = src._arrays["train"]
        xt = torch.from_numpy(x[:, None].astype("float32") / 255.0)
        mean, std = float(xt.mean()), float(xt.std())
        labels = torch.from_numpy(y.astype("int64"))
        return TensorSampler((xt - mean) / std, labels, 10, (mean,), (std,)), "fashion-mnist"
    except Exception:  # noqa: BLE001 - fall back to generated data of the same format
        g = torch.Generator().manual_seed(0)
        x = torch.randn(10 * 600, 1, 28, 28, generator=g)
        return TensorSampler(x, torch.arange(10).repeat_interleave(600), 10, (0.0,), (1.0,)), "generated"


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step, syn0: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig, its: int,
               device: torch.device) -> list[float]:
    syn = syn0.clone().to(device).requires_grad_(True)
    opt = (torch.optim.AdamW([syn], lr=cfg.lr_img) if cfg.method == "ncfm"
           else torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum))
    out = []
    for it in range(its):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(syn, labels.to(device), opt, iteration_generator(cfg.seed, it))
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--num-freqs", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="dm,hdd,ncfm")
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sampler, data = real_sampler()
    rows = []
    for method in args.methods.split(","):
        extra = {"ncfm": {"num_freqs": args.num_freqs, "factor": 1}, "lr_img": 1e-3} if method == "ncfm" else {}
        cfg = DistillConfig(method=method, ipc=args.ipc, batch_real=args.batch_real, iterations=args.iterations,
                            **extra)
        labels = torch.arange(10).repeat_interleave(args.ipc)
        syn0 = initial_images(sampler, ipc=args.ipc, init="real", generator=iteration_generator(0, -1, "init"))
        impls = {"ddflow": (MatchingStep if method != "ncfm" else NCFMStep)(sampler, cfg, dev),
                 "per-class": ReferenceStyleStep(sampler, cfg, dev)}
        for step in impls.values():  # warm-up
            time_steps(step, syn0, labels, cfg, 1, dev)
        times: dict[str, list[float]] = {n: [] for n in impls}
        for _ in range(args.iterations):
            for name, step in impls.items():
                times[name] += time_steps(step, syn0, labels, cfg, 1, dev)
        med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
        rows.append({"method": method, "ddflow_s_per_it": med["ddflow"], "per_class_s_per_it": med["per-class"],
                     "speedup": med["per-class"] / med["ddflow"], "times": times})
    res = {"benchmark": "speed", "device": str(dev), "data": data, "ipc": args.ipc, "batch_real": args.batch_real,
           "threads": torch.get_num_threads(), "machine": platform.machine(), "peak_mb_process": peak_mb(dev),
           "rows": rows}
    print(f"{'method':<6} {'ddflow s/it':>12} {'per-class s/it':>15} {'speedup':>8}")
    for r in rows:
        print(f"{r['method']:<6} {r['ddflow_s_per_it']:>12.3f} {r['per_class_s_per_it']:>15.3f} {r['speedup']:>7.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
