"""Latent pipeline speed and quantizer quality on Fashion-MNIST (CPU by default).

Stages, through the same stage bodies the orchestration uses (:mod:`tasks.latents`,
:func:`ddcore.latent.method.distill_from_latents`):

1. ingest two subsets of Fashion-MNIST (first ``--vae-per-class`` and first ``--per-class`` train images
   per class) into a temporary folder;
2. train the small VAE on the first subset (``--epochs`` epochs) -> seconds, images/s;
3. encode the second subset into latent shards -> latents/s;
4. DDOQ at each IPC: per-class k-means time (k-means passes + exact assignment pass, shards streamed)
   and W2 of the class latents to the mass-weighted (DDOQ) vs the uniform (D4M) quantizer on the same
   centroids, with the relative reduction ``1 - W2_weighted / W2_uniform``.

Prints a table and writes ``benchmarks/results/latent_speed.json`` (sizes and settings included).
Usage: ``python benchmarks/latent_speed.py [--per-class 1000] [--vae-per-class 120] [--epochs 2]``.
The defaults take about 3 minutes on 2 idle CPU cores (VAE training dominates; under CPU contention the
per-class k-means times, made of many small torch ops, inflate by up to 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from benchmarks import write_json
from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.latent.ddoq import DDOQConfig
from ddcore.latent.method import distill_from_latents
from ddcore.latent.vae import VAEConfig
from tasks.latents import encode_latents_stage, train_or_load_vae

#: A small VAE that trains in about a minute on 2 cores (factor 4: 28x28 -> 4x7x7 latents).
BENCH_VAE = {"block_out_channels": [16, 32, 32], "norm_num_groups": 16, "latent_channels": 4,
             "mid_block_attention": False, "batch_size": 64, "lr": 2e-3, "seed": 0}


def _note(msg: str) -> None:
    print(f"[latent_speed] {msg}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict:
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    vae_cfg = VAEConfig.from_mapping({**BENCH_VAE, "epochs": args.epochs})
    res: dict = {"benchmark": "latent_speed", "dataset": "fashion-mnist", "machine": platform.machine(),
                 "device": device, "torch_threads": torch.get_num_threads(),
                 "sizes": {"vae_train_images": 10 * args.vae_per_class, "encoded_images": 10 * args.per_class,
                           "per_class": args.per_class, "vae_epochs": args.epochs, "ipcs": args.ipcs,
                           "w2_max_points": args.w2_max_points, "latent_dtype": args.dtype,
                           "kmeans_iters": args.kmeans_iters, "kmeans_batch": args.kmeans_batch},
                 "vae_config": vae_cfg.model_dump(mode="json")}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = {"kind": "fashion_mnist"}
        t0 = time.perf_counter()
        ingest(IngestConfig.from_mapping({"source": src, "max_per_class": args.vae_per_class}), d / "vae_data")
        ingest(IngestConfig.from_mapping({"source": src, "max_per_class": args.per_class}), d / "data")
        res["ingest_seconds"] = time.perf_counter() - t0
        _note(f"ingested in {res['ingest_seconds']:.1f}s; training the VAE")

        t0 = time.perf_counter()
        _, vae_digest = train_or_load_vae(str(d / "vae_data"), vae_cfg, d / "vae", checkpoint_dir=None, device=device)
        secs = time.perf_counter() - t0
        hist = json.loads((d / "vae" / "training.json").read_text())["history"]
        n_img = 10 * args.vae_per_class * args.epochs
        res["vae"] = {"seconds": secs, "epochs": args.epochs, "images": 10 * args.vae_per_class,
                      "images_per_s": n_img / secs, "final_recon_l1": hist["recon"][-1], "digest": vae_digest}

        _note(f"VAE trained in {secs:.1f}s; encoding")
        enc = encode_latents_stage(str(d / "data"), d / "vae", d / "lat", batch_size=args.batch_size,
                                   dtype=args.dtype, device=device, checkpoint_dir=None)
        res["encode"] = enc

        res["ddoq"] = []
        for ipc in args.ipcs:
            _note(f"DDOQ ipc={ipc}")
            cfg = DDOQConfig(ipc=ipc, seed=0, iters=args.kmeans_iters, batch_size=args.kmeans_batch)
            t0 = time.perf_counter()
            made = distill_from_latents(open_artifact(d / "data"), d / "lat", d / "vae", cfg, device=device,
                                        w2_max_points=args.w2_max_points)
            m = {"seconds": time.perf_counter() - t0, "w2_reduction": made.extra["w2"]["mean_reduction"],
                 "empty_cells": made.extra["empty_cells"]}
            per = made.extra["w2"]["per_class"]
            res["ddoq"].append({
                "ipc": ipc, "config": cfg.model_dump(mode="json"), "seconds": m["seconds"],
                "kmeans_seconds_per_class": made.extra["kmeans_seconds"],
                "w2_weighted": [r["w2_weighted"] for r in per], "w2_uniform": [r["w2_uniform"] for r in per],
                "reduction": [r["reduction"] for r in per],
                "reduction_w2sq": [1 - r["w2sq_weighted"] / r["w2sq_uniform"] if r["w2sq_uniform"] else 0.0
                                   for r in per],
                "mean_reduction": m["w2_reduction"], "w2_points_per_class": [r["n"] for r in per],
                "empty_cells": m["empty_cells"],
            })
            res["ddoq"][-1]["mean_reduction_w2sq"] = float(np.mean(res["ddoq"][-1]["reduction_w2sq"]))
    return res


def report(res: dict) -> None:
    s, v, e = res["sizes"], res["vae"], res["encode"]
    print(f"device {res['device']}, torch threads {res['torch_threads']}; encoded {s['encoded_images']} images "
          f"({s['per_class']}/class), latents {s['latent_dtype']}")
    print(f"VAE training : {v['epochs']} epochs x {v['images']} images in {v['seconds']:.1f}s "
          f"({v['images_per_s']:.0f} img/s), final recon L1 {v['final_recon_l1']:.4f}")
    print(f"encode       : {e['n']} latents in {e['seconds']:.1f}s ({e['latents_per_s']:.0f} latents/s)")
    head = f"{'ipc':>4} {'class':>5} {'kmeans s':>9} {'W2 weighted':>12} {'W2 uniform':>11} {'reduction':>10}"
    print(head)
    print("-" * len(head))
    for r in res["ddoq"]:
        for c in range(len(r["reduction"])):
            print(f"{r['ipc']:>4} {c:>5} {r['kmeans_seconds_per_class'][c]:>9.2f} {r['w2_weighted'][c]:>12.4f} "
                  f"{r['w2_uniform'][c]:>11.4f} {100 * r['reduction'][c]:>9.1f}%")
        print(f"{r['ipc']:>4} {'mean':>5} {np.mean(r['kmeans_seconds_per_class']):>9.2f} "
              f"{np.mean(r['w2_weighted']):>12.4f} {np.mean(r['w2_uniform']):>11.4f} "
              f"{100 * r['mean_reduction']:>9.1f}%   (on W2^2: {100 * r['mean_reduction_w2sq']:.1f}%)")
        print("-" * len(head))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=1000, help="train images per class to encode and quantize")
    ap.add_argument("--vae-per-class", type=int, default=120, help="train images per class for the VAE")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--kmeans-iters", type=int, default=None,
                    help="k-means updates per class (default: one pass, as D4M)")
    ap.add_argument("--kmeans-batch", type=int, default=None, help="k-means batch (default: ipc, as D4M)")
    ap.add_argument("--batch-size", type=int, default=256, help="encode batch")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--w2-max-points", type=int, default=2000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="benchmarks/results/latent_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = measure(args)
    res["total_seconds"] = time.perf_counter() - t0
    report(res)
    print(f"total {res['total_seconds']:.0f}s")
    write_json(args.out, res)


if __name__ == "__main__":
    main()
