"""Why does DDOQ lose to random real images under a teacher, and what closes the gap? A validation study.

At the demo's budget (configs/demo.yaml: the same VAE, teacher and width-32 evaluation networks) the train split
is cut per class into a fit part and a held-out validation part (``--val-fraction``, seeded). The VAE, the
latents, the teacher, the denoiser and every set are made from the fit part only; every accuracy is scored on
the validation part, so what is chosen here never saw the test split. Points:

* decoding of the DDOQ (and ``--variants``: D4M) centroids: plain, or through the img2img pushforward with a
  denoiser trained ``--denoiser-epochs`` passes (progressively: one UNet, resumed) at each ``--strengths`` and
  ``--guidance`` scale, one UNet per ``--timestep-limits`` entry (``none``: every timestep; ``500``:
  ``max_train_timestep`` 500);
* the student recipe under the teacher (``--recipes``): ``dm`` (the demo's: SGD 0.01, batch 256, DSA, 100
  epochs) and ``relabel`` (the SRe2L/D4M relabel recipe's optimizer: AdamW 1e-3, wd 0.01, cosine, CutMix,
  batch 50, same epochs and DSA);
* random real subsets of the fit part under the same teacher and recipe, network seed i paired with subset
  seed 100 + i as in the pipeline's baseline.

Per point: accuracy over ``--num-eval`` networks and the paired gap to random (same network seed) with its std
(:func:`ddcore.evaluate.metrics.paired_scores`' IOR).
Prints a table and writes ``benchmarks/results/ddoq_soft_val.json`` (rewritten after every point).
Usage: ``python -m benchmarks.ddoq_soft [--denoiser-epochs 2,4] [--strengths 0.5,0.7] [--recipes dm,relabel]``
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
from benchmarks.ddoq_weights import class_latents
from benchmarks.hyperbolic import split_fit_val
from ddcore.data import ArtifactSampler, open_artifact
from ddcore.evaluate.metrics import by_seed, paired_scores, summarize
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import evaluate_random, evaluate_set
from ddcore.evaluate.teacher import train_teacher
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq
from ddcore.latent.denoiser import DenoiserConfig, TensorLatents, build_scheduler, build_unet, train_denoiser
from ddcore.latent.pushforward import LatentDenoiser, Pushforward, PushforwardConfig
from ddcore.latent.vae import build_vae, train_vae
from flows.config import RunConfig, load_config

RELABEL = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "lr_schedule": "cosine", "cutmix": True,
           "batch_size": 50}
"""The relabel recipe's optimizer settings (docs/methods.md §5.4) on the demo's network, epochs and DSA."""


def recipes(config: str, num_eval: int) -> dict[str, EvalConfig]:
    """The student recipes compared under the teacher, keyed by name: the soft-label rows' recipe of ``config``
    (:meth:`RunConfig.soft_eval`) with no recipe fields changed (``dm``) and with :data:`RELABEL` (``relabel``)."""
    return {name: load_config(config, [f"soft_labels.evaluation={json.dumps(fields)}",
                                       f"evaluation.num_eval={num_eval}"]).soft_eval()
            for name, fields in (("dm", {}), ("relabel", RELABEL))}


def fit_latents(lat: list[torch.Tensor]) -> TensorLatents:
    """The per-class latents as one denoiser training source (labels = class index)."""
    return TensorLatents(torch.cat(lat), np.concatenate([np.full(z.shape[0], c, np.int64) for c, z in enumerate(lat)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml", help="run config giving the VAE, teacher, evaluation")
    ap.add_argument("--data", required=True, help="an ingested Fashion-MNIST artifact (e.g. <demo root>/data/...)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--num-eval", type=int, default=5)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--variants", default="ddoq")
    ap.add_argument("--denoiser-epochs", default="2,4")
    ap.add_argument("--strengths", default="0.5,0.7")
    ap.add_argument("--timestep-limits", default="none")
    ap.add_argument("--guidance", default="2.0", help="classifier-free guidance scales, comma-separated")
    ap.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                    help="also evaluate the plainly decoded centroids (--no-plain: pushforward points only)")
    ap.add_argument("--recipes", default="dm,relabel")
    ap.add_argument("--out", default="benchmarks/results/ddoq_soft_val.json")
    args = ap.parse_args()
    run = load_config(args.config)
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    art = open_artifact(args.data)
    full = ArtifactSampler(art, "train", cache=True)
    fit, (vx, vy) = split_fit_val(full, args.val_fraction)
    sampler = ArtifactSampler(art, "train", keep=fit, cache=True)
    c, h, _ = sampler.image_shape
    vae = build_vae(run.vae, c, h)
    train_vae(vae, sampler, run.vae)
    vae.eval()
    lat = class_latents(sampler, vae)
    teacher, tmetrics = train_teacher(sampler, vx, vy, config=run.soft_labels.teacher)
    print(f"teacher: {100 * tmetrics['test_acc']:.2f} % on validation ({time.perf_counter() - t_start:.0f} s)",
          flush=True)
    recs = {k: v for k, v in recipes(args.config, args.num_eval).items() if k in args.recipes.split(",")}
    random_accs = {name: evaluate_random(sampler, [args.ipc] * sampler.num_classes, vx, vy, config=rc,
                                         teacher=teacher).accs for name, rc in recs.items()}
    for name, accs in random_accs.items():
        print(f"random  {name:8s} {100 * np.mean(accs):5.1f} ± {100 * np.std(accs):.1f}", flush=True)
    rows: list[dict] = []
    limits = [None if v == "none" else int(v) for v in args.timestep_limits.split(",")]
    decodings: list[tuple[str, int | None, int | None, float | None, float | None]] = \
        [("plain", None, None, None, None)] if args.plain else []
    decodings += [(f"pf-t{lim or 'all'}-e{e}-s{s}-g{g}", lim, int(e), float(s), float(g)) for lim in limits
                  for e in args.denoiser_epochs.split(",") for s in args.strengths.split(",")
                  for g in args.guidance.split(",")]
    src = fit_latents(lat)
    den_seconds: dict[str, float] = {}
    unets: dict[int | None, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, limit, epochs, strength, guidance in decodings:
            pf = None
            if epochs is not None:
                dcfg = DenoiserConfig.model_validate({**run.denoiser.model_dump(), "epochs": epochs, "lr": 1e-3,
                                                      "max_train_per_class": 2000, "max_train_timestep": limit})
                if limit not in unets:
                    unets[limit] = build_unet(dcfg, src.latents.shape[1], tuple(src.latents.shape[2:]),
                                              sampler.num_classes)
                tag = f"t{limit or 'all'}-e{epochs}"
                if tag not in den_seconds:
                    stats = train_denoiser(unets[limit], src, dcfg, checkpoint_dir=Path(tmp, f"t{limit}"))
                    den_seconds[tag] = stats.seconds
                    print(f"denoiser {tag}: loss {stats.epoch_loss[-1]:.4f} ({stats.seconds:.0f} s)", flush=True)
                model = LatentDenoiser(unets[limit], build_scheduler(dcfg), None, sampler.num_classes)
                pf = Pushforward(model, vae, PushforwardConfig(path="-", strength=strength, guidance=guidance,
                                                               steps=50, seed=0), image_size=h, channels=c)
            for variant in args.variants.split(","):
                made = distill_ddoq(lambda k: iter(lat[k].split(2048)), vae, DDOQConfig(ipc=args.ipc, variant=variant),
                                    num_classes=sampler.num_classes, mean=sampler.mean, std=sampler.std,
                                    image_size=h, pushforward=pf)
                for rname, rc in recs.items():
                    accs = evaluate_set(made.synthetic, vx, vy, config=rc, teacher=teacher).accs
                    seeds = [rc.seed + i for i in range(args.num_eval)]  # the network seeds of both sides
                    paired = paired_scores(by_seed(seeds, accs, variant), names=(variant, "random", "-"),
                                           baseline=by_seed(seeds, random_accs[rname], "random"))
                    gap = (paired.ior, paired.ior_std)
                    rows.append({"variant": variant, "decoding": name, "max_train_timestep": limit,
                                 "denoiser_epochs": epochs, "strength": strength, "guidance": guidance,
                                 "recipe": rname, "accs": accs,
                                 "mean_std": summarize(accs), "random_accs": random_accs[rname],
                                 "gap_mean_std": gap})
                    print(f"{variant:5s} {name:16s} {rname:8s} {100 * np.mean(accs):5.1f} ± {100 * np.std(accs):.1f}"
                          f"  vs random {100 * gap[0]:+.1f} ± {100 * gap[1]:.1f}", flush=True)
                    write(args, run, recs, tmetrics, rows, random_accs, den_seconds, t_start, complete=False)
    write(args, run, recs, tmetrics, rows, random_accs, den_seconds, t_start, complete=True)


def write(args: argparse.Namespace, run: RunConfig, recs: dict[str, EvalConfig], tmetrics: dict, rows: list[dict],
          random_accs: dict, den_seconds: dict, t_start: float, *, complete: bool) -> None:
    """Write the study's JSON to ``args.out`` (rewritten after every point; ``complete`` at the end)."""
    out = {"benchmark": "ddoq_soft", "dataset": "fashion-mnist", "split": "validation",
           "val_fraction": args.val_fraction, "ipc": args.ipc, "num_eval": args.num_eval, "guidance": args.guidance,
           "config": args.config, "vae": run.vae.model_dump(mode="json"),
           "teacher": {**run.soft_labels.teacher.model_dump(mode="json"), **tmetrics},
           "temperature": run.soft_labels.temperature, "recipes": {k: v.label for k, v in recs.items()},
           "random_accs": random_accs, "denoiser_seconds": den_seconds,
           "seconds": time.perf_counter() - t_start, "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_avg_at_end": os.getloadavg(), "complete": complete, "rows": rows}
    write_json(args.out, out, newline=True)


if __name__ == "__main__":
    main()
