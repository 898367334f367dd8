"""A short Fashion-MNIST distillation at the published per-iteration settings, timed and scored: DM and NCFM.

Per iteration as docs/methods.md gives them (§2.2, §4.5): DM at IPC 10 with 256 real images per class, lr 1, the
ConvNet-3 of width 128 and the full DSA strategy; NCFM at IPC 10 with 1024 real images per class, 4096
frequencies, factor-2 mosaics and AdamW 1e-3 (no pretrained pool: the pool is a one-off cost before the loop).
Only the number of iterations is cut (``--iterations``; the papers run 20,000), so the accuracy is a smoke figure
for the device path, not a reproduction. Each set is scored by the DM protocol with ``--epochs`` epochs and
``--num-eval`` networks, beside random real images at the same IPC.

    python -m benchmarks.gpu_distill --device cuda --out benchmarks/results/gpu_distill.json
    python -m benchmarks.gpu_distill --dry-run      # CPU, 200 images per class, 2 iterations, 1 epoch

Fashion-MNIST comes from ``DDFLOW_FASHION_MNIST`` or the Debian package's folder (``make data``).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_json
from ddcore import api

PAPER: dict[str, dict[str, Any]] = {
    "dm": {"lr_img": 1.0, "batch_real": 256, "dsa_strategy": "color_crop_cutout_flip_scale_rotate"},
    "ncfm": {"lr_img": 1e-3, "batch_real": 1024, "init": "mix", "ncfm": {"num_freqs": 4096, "factor": 2}},
}
DRY: dict[str, dict[str, Any]] = {
    "dm": {"batch_real": 16, "width": 16},
    "ncfm": {"batch_real": 16, "width": 16, "ncfm": {"num_freqs": 64, "factor": 2}},
}


def run_method(data: Any, method: str, fields: dict[str, Any], *, ipc: int, iterations: int, device: str,
               eval_cfg: dict[str, Any]) -> dict[str, Any]:
    """Distil, time the loop (first iteration apart: cuDNN autotuning and allocator warm-up) and score the set."""
    stamps: list[tuple[int, float]] = []
    every = 10 if iterations >= 20 else 1
    t0 = time.perf_counter()
    sset = api.distill(data, method, ipc=ipc, iterations=iterations, device=device, log_every=every,
                       log=lambda it, m: stamps.append((it, time.perf_counter())), **fields)
    wall = time.perf_counter() - t0
    (i0, s0), (i1, s1) = stamps[0], stamps[-1]
    steady = (s1 - s0) / (i1 - i0) if i1 > i0 else None
    t1 = time.perf_counter()
    ev = api.evaluate(sset, data, config=eval_cfg, device=device)
    return {"method": method, "ipc": ipc, "iterations": iterations, "fields": fields, "distill_s": round(wall, 2),
            "s_per_iteration": None if steady is None else round(steady, 5), "evaluate_s": round(
                time.perf_counter() - t1, 2), "acc_mean": ev.synthetic.mean, "acc_std": ev.synthetic.std,
            "random_acc_mean": ev.random.mean, "ior": ev.scores.ior}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300, help="DM-protocol evaluation epochs")
    ap.add_argument("--num-eval", type=int, default=2)
    ap.add_argument("--methods", default="dm,ncfm")
    ap.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU: checks the path, not the speed")
    ap.add_argument("--out", default="benchmarks/results/gpu_distill.json")
    args = ap.parse_args(argv)
    settings, max_per_class = PAPER, None
    if args.dry_run:
        args.device, args.iterations, args.ipc, args.epochs, args.num_eval = "cpu", 2, 1, 1, 1
        settings, max_per_class = DRY, 200
    eval_cfg = {"protocol": "dm", "epochs": args.epochs, "num_eval": args.num_eval,
                **({"width": 16} if args.dry_run else {})}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddflow-gpu-distill-") as tmp:
        t0 = time.perf_counter()
        data = api.load_dataset("fashion-mnist", out=Path(tmp) / "fmnist", max_per_class=max_per_class)
        ingest_s = time.perf_counter() - t0
        for method in args.methods.split(","):
            row = run_method(data, method, settings[method], ipc=args.ipc, iterations=args.iterations,
                             device=args.device, eval_cfg=eval_cfg)
            rows.append(row)
            print(f"{method:<5} IPC {row['ipc']}: {row['s_per_iteration']} s/it, acc {row['acc_mean']:.4f} "
                  f"(random {row['random_acc_mean']:.4f}), distill {row['distill_s']} s, eval {row['evaluate_s']} s",
                  flush=True)
    res = {"benchmark": "gpu_distill", "device": args.device, "dry_run": args.dry_run, "ingest_s": round(ingest_s, 2),
           "eval": eval_cfg, "torch": torch.__version__, "machine": platform.machine(),
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None, "rows": rows}
    out = Path(args.out)
    write_json(out, res, indent=1)
    return res


if __name__ == "__main__":
    main()
