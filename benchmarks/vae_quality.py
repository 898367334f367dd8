"""How good a VAE the demo can afford: held-out reconstruction quality vs training images and time.

For each architecture (``--archs``, a JSON list of ``VAEConfig`` fields), a VAE is built and trained with
:func:`ddcore.latent.vae.train_vae` on Fashion-MNIST's train split minus a validation split of its last
``--val`` images; every ``--every`` steps the validation images are encoded (posterior mean) and decoded,
and the pixel MSE is reported as a fraction of the MSE of predicting the mean training image (the
``ratio``; 1.0 = no better than the mean image) together with PSNR. The test split is measured once at the
end. Timings are CPU seconds of this process and wall seconds, with the machine load beside them.

Prints a table and writes ``benchmarks/results/vae_quality.json``.
Usage: ``python -m benchmarks.vae_quality [--steps 300] [--every 75] [--archs '[{...}, ...]']``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from benchmarks import write_json
from ddcore.data.sources.idx import FILES, _locate, find_fashion_mnist, read_idx
from ddcore.latent.vae import VAEConfig, build_vae, decode, encode, train_vae

ARCHS = [
    {"block_out_channels": [16, 32], "norm_num_groups": 16, "latent_channels": 4, "mid_block_attention": False},
    {"block_out_channels": [16, 32, 32], "norm_num_groups": 16, "latent_channels": 4, "mid_block_attention": False},
]


def load_split(split: str) -> torch.Tensor:
    """Fashion-MNIST images of ``split`` (``train``/``test``) as float32 pixels in [0, 1], ``[N, 1, 28, 28]``."""
    root = find_fashion_mnist(None)
    x = read_idx(_locate(root, FILES[split][0]))  # type: ignore[arg-type]
    return torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


def quality(vae: torch.nn.Module, x: torch.Tensor, mean_img: torch.Tensor) -> dict[str, float]:
    """MSE of ``decode(encode(x))`` vs ``x``, as a fraction of the mean-image MSE, and PSNR (dB)."""
    was = vae.training
    vae.eval()
    rec = decode(vae, encode(vae, x), image_size=x.shape[-1])
    vae.train(was)
    mse = float(((rec - x) ** 2).mean())
    return {"mse": mse, "ratio": mse / float(((x - mean_img) ** 2).mean()), "psnr": 10 * float(np.log10(1 / mse))}


def run(arch: dict, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor, args: argparse.Namespace) -> dict:
    cfg = VAEConfig.model_validate({**arch, "epochs": 1, "batch_size": args.batch_size, "lr": args.lr,
                                    "seed": args.seed})
    vae = build_vae(cfg, 1, 28)
    mean_img = train.mean(0, keepdim=True)
    curve: list[dict] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(args.seed))

    def batches(epoch: int):
        for step in range(1, args.steps + 1):
            i = (step - 1) * cfg.batch_size % train.shape[0]
            yield train[perm[i : i + cfg.batch_size]]
            if step % args.every == 0 or step == args.steps:  # runs after the optimiser step of this batch
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                curve.append({"step": step, "images_seen": step * cfg.batch_size, "cpu_s": cpu, "wall_s": wall,
                              "load_avg_1m": os.getloadavg()[0], **quality(vae, val, mean_img)})
                print(f"  {json.dumps(cfg.block_out_channels)} step {step:>5} images {step * cfg.batch_size:>6} "
                      f"ratio {curve[-1]['ratio']:.3f} PSNR {curve[-1]['psnr']:.1f} dB  cpu {cpu:.0f}s "
                      f"wall {wall:.0f}s", flush=True)

    train_vae(vae, batches, cfg)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    return {"config": cfg.model_dump(mode="json"), "latent_shape": [cfg.latent_channels, -(-28 // factor),
                                                                     -(-28 // factor)],
            "curve": curve, "test": quality(vae, test, mean_img)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=json.dumps(ARCHS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=75)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="benchmarks/results/vae_quality.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = load_split("train")
    train, val, test = x[: -args.val], x[-args.val :], load_split("test")
    rows = []
    for arch in json.loads(args.archs):
        rows.append(run(arch, train, val, test, args))
    out = {"benchmark": "vae_quality", "dataset": "fashion-mnist", "validation": f"last {args.val} train images",
           "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
           "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows}
    write_json(args.out, out)
    print(f"{'blocks':<14} {'latent':<10} {'steps':>6} {'images':>7} {'val ratio':>9} {'PSNR':>6} {'test ratio':>10} "
          f"{'cpu s':>6}")
    for r in rows:
        last = r["curve"][-1]
        print(f"{json.dumps(r['config']['block_out_channels']):<14} {'x'.join(map(str, r['latent_shape'])):<10} "
              f"{last['step']:>6} {last['images_seen']:>7} {last['ratio']:>9.3f} {last['psnr']:>6.1f} "
              f"{r['test']['ratio']:>10.3f} {last['cpu_s']:>6.0f}")


if __name__ == "__main__":
    main()
