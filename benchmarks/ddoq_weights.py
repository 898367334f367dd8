"""DDOQ's claim put to the test: do Voronoi-mass weights beat uniform weights on the same centroids?

For each IPC, per-class k-means in a latent space (a VAE trained here, or ``--space pixel``: the identity
autoencoder) gives one set of centroids; DDOQ stores them with their cell masses as image weights, D4M with
uniform weights (the same k-means seeds give the same centroids: checked). Both sets, and ``num_eval``
random real subsets, are trained on by the same fresh ConvNets under hard labels and under the soft-label
protocol (a teacher trained on the real train split, KL at temperature T on every augmented batch), and
tested on the test split. Per row: accuracy mean ± std over the evaluation seeds, the paired difference
DDOQ − D4M (same network seed) with its std, and the W2 of the class latents to the weighted and the
uniform quantizer (mean over classes, on the same centroids).

Nothing is tuned here (the test split only reports). Prints a table and writes
``benchmarks/results/ddoq_weights.json``.
Usage: ``python -m benchmarks.ddoq_weights [--ipcs 1,10,50] [--labels hard,soft] [--num-eval 5] [--space latent|pixel]``
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
from benchmarks.quality import fashion_mnist
from ddcore.data import ArtifactSampler
from ddcore.evaluate.metrics import summarize
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import evaluate_random, evaluate_set
from ddcore.evaluate.teacher import TeacherConfig, train_teacher
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq
from ddcore.latent.kmeans import cell_masses, w2_uniform, w2_weighted
from ddcore.latent.vae import VAEConfig, build_vae, encode, train_vae
from ddcore.seeding import derive_seed


def class_latents(sampler: ArtifactSampler, vae: torch.nn.Module) -> list[torch.Tensor]:
    """Every train image's latent, per class (pixels mapped back from the sampler's normalisation)."""
    m = torch.tensor(sampler.mean).view(1, -1, 1, 1)
    s = torch.tensor(sampler.std).view(1, -1, 1, 1)
    out = []
    for k in range(sampler.num_classes):
        x = sampler.get(k, torch.arange(sampler.class_size(k)))
        out.append(encode(vae, (x * s + m).clamp(0, 1)).float().cpu())
    return out


def w2_means(lat: list[torch.Tensor], cents: list[torch.Tensor], counts: list[list[int]], seed: int,
             max_points: int = 2000) -> tuple[float, float]:
    """Mean over classes of W2(class latents, weighted quantizer) and W2(class latents, uniform quantizer)."""
    wd, ud = [], []
    for c, (z, cent) in enumerate(zip(lat, cents, strict=True)):
        if z.shape[0] > max_points:
            g = torch.Generator().manual_seed(derive_seed(seed, "w2", c))
            z = z[torch.randperm(z.shape[0], generator=g)[:max_points]]
        wd.append(float(np.sqrt(max(w2_weighted(z.double(), cent.double(), cell_masses(torch.tensor(counts[c]))),
                                    0.0))))
        ud.append(float(np.sqrt(max(w2_uniform(z.double(), cent.double()), 0.0))))
    return float(np.mean(wd)), float(np.mean(ud))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ipcs", default="1,10,50")
    ap.add_argument("--num-eval", type=int, default=5)
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--space", choices=["latent", "pixel"], default="latent")
    ap.add_argument("--vae", default='{"block_out_channels": [32, 64], "norm_num_groups": 32, "epochs": 2, '
                                      '"batch_size": 128, "mid_block_attention": false}',
                    help="VAEConfig as JSON (--space latent)")
    ap.add_argument("--labels", default="hard,soft", help="label protocols to run (hard, soft or both)")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                    help="also train on num_eval random real subsets per IPC (--no-random: DDOQ vs D4M only)")
    ap.add_argument("--data", default=None, help="existing Fashion-MNIST artifact (else ingested to a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/ddoq_weights.json")
    args = ap.parse_args()
    labels = set(args.labels.split(","))
    if not labels <= {"hard", "soft"}:
        ap.error(f"--labels: unknown protocol in {args.labels!r}; use hard, soft or hard,soft")
    t_start = time.perf_counter()
    tmp, sampler, (test_x, test_y) = fashion_mnist(args.data)  # noqa: F841 - tmp keeps the folder alive
    c, h, _ = sampler.image_shape
    vcfg = VAEConfig(source="identity") if args.space == "pixel" else VAEConfig.model_validate(json.loads(args.vae))
    t0 = time.perf_counter()
    vae = build_vae(vcfg, c, h)
    if vcfg.source == "train":
        train_vae(vae, sampler, vcfg)
    vae.eval()
    lat = class_latents(sampler, vae)
    vae_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    teacher, tmetrics = None, {}
    if "soft" in labels:
        teacher, tmetrics = train_teacher(sampler, test_x, test_y, config=TeacherConfig(epochs=args.teacher_epochs,
                                                                                        width=args.width))
    teacher_seconds = time.perf_counter() - t0
    hard = EvalConfig.dm_protocol(epochs=args.eval_epochs, width=args.width, num_eval=args.num_eval)
    soft = hard.model_copy(update={"soft_label_temperature": args.temperature})
    rows = []
    for ipc in [int(v) for v in args.ipcs.split(",")]:
        made = {}
        for variant in ("ddoq", "d4m"):
            made[variant] = distill_ddoq(lambda k: iter(lat[k].split(2048)), vae, DDOQConfig(ipc=ipc, variant=variant),
                                         num_classes=sampler.num_classes, mean=sampler.mean, std=sampler.std,
                                         image_size=h)
        assert torch.equal(made["ddoq"].synthetic.images, made["d4m"].synthetic.images), "same k-means, same images"
        w2w, w2u = w2_means(lat, made["ddoq"].centroids, made["ddoq"].synthetic.extra["cell_counts"], 0)
        for label, ecfg, tch in [p for p in (("hard", hard, None), ("soft", soft, teacher)) if p[0] in labels]:
            accs = {v: evaluate_set(made[v].synthetic, test_x, test_y, config=ecfg, teacher=tch).accs
                    for v in ("ddoq", "d4m")}
            rnd = evaluate_random(sampler, [ipc] * sampler.num_classes, test_x, test_y, config=ecfg,
                                  teacher=tch).accs if args.random else []
            diff = [a - b for a, b in zip(accs["ddoq"], accs["d4m"], strict=True)]
            row = {"ipc": ipc, "labels": label, "ddoq": accs["ddoq"], "d4m": accs["d4m"], "random": rnd,
                   "ddoq_mean_std": summarize(accs["ddoq"]), "d4m_mean_std": summarize(accs["d4m"]),
                   "random_mean_std": summarize(rnd) if rnd else None, "diff_mean_std": summarize(diff),
                   "w2_weighted": w2w, "w2_uniform": w2u, "w2_reduction": 1 - w2w / w2u if w2u else 0.0}
            rows.append(row)
            pct = {k: tuple(100 * v for v in row[f"{k}_mean_std"] or (float("nan"),) * 2)
                   for k in ("ddoq", "d4m", "diff", "random")}
            print(f"ipc {ipc:>3} {label}  DDOQ {pct['ddoq'][0]:5.1f} ± {pct['ddoq'][1]:.1f}  D4M "
                  f"{pct['d4m'][0]:5.1f} ± {pct['d4m'][1]:.1f}  DDOQ-D4M {pct['diff'][0]:+.1f} ± {pct['diff'][1]:.1f}"
                  f"  random "
                  f"{pct['random'][0]:5.1f} ± {pct['random'][1]:.1f}  W2 {w2w:.3f}/{w2u:.3f}", flush=True)
            _write(args, vcfg, hard, tmetrics, rows, vae_seconds, teacher_seconds, t_start, complete=False)
    _write(args, vcfg, hard, tmetrics, rows, vae_seconds, teacher_seconds, t_start, complete=True)


def _write(args: argparse.Namespace, vcfg: VAEConfig, hard: EvalConfig, tmetrics: dict, rows: list[dict],
           vae_seconds: float, teacher_seconds: float, t_start: float, *, complete: bool) -> None:
    out = {"benchmark": "ddoq_weights", "dataset": "fashion-mnist", "space": args.space,
           "vae_config": vcfg.model_dump(mode="json"), "eval_protocol": hard.label, "num_eval": args.num_eval,
           "soft_temperature": args.temperature, "teacher": {k: v for k, v in tmetrics.items()},
           "vae_seconds": vae_seconds, "teacher_seconds": teacher_seconds,
           "seconds": time.perf_counter() - t_start, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_avg_at_end": os.getloadavg(), "torch_threads": torch.get_num_threads(),
           "complete": complete, "rows": rows}
    write_json(args.out, out)


if __name__ == "__main__":
    main()
