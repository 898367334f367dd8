"""Projection of the shipped ``configs/imagenet1k.yaml`` to real ImageNet-1k (1.28M images at 128 px) on 1 and 8 GPUs.

FLOP counts are measured (``torch.utils.flop_counter`` on one image through each network as the config builds
it: the NCFM ConvNet-5 and the evaluation ResNet-18-BN at 128 px, torchvision's ResNet-18 teacher at 224 px,
and a Stable-Diffusion-shaped diffusers VAE, f8 with 4 latent channels, whose encoder and decoder run at
128 px); the work of each stage is counted from the config's budgets (:func:`stage_work`); the conversion to
time assumes an achieved GPU rate (:data:`ASSUMPTIONS`, stated with every other assumption in the JSON and in
docs/scale.md). The CPU anchor beside it: the same FLOP counter over the micro run's networks at 64 px,
divided by the stage times ``benchmarks/scale.py`` measured, gives the rate this machine achieved.

    python -m benchmarks.scale_projection      # reads benchmarks/results/scale.json, adds its "projection"
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import REPO, write_json

SCALE_JSON = REPO / "benchmarks" / "results" / "scale.json"

ASSUMPTIONS: dict[str, Any] = {
    "train_images": 1_281_167,
    "val_images": 50_000,
    "classes": 1000,
    "size": 128,
    "gpu_tflops_achieved": 100.0,
    "gpu_note": "float32 training on TF32 tensor cores at about 20 % of an H100/H200's 494 dense TF32 TFLOP/s; "
                "small ConvNets reach less, large batches of ResNet-18 more (take the range x0.5 .. x2)",
    "backward_factor": 2.0,
    "backward_note": "a backward pass (input and weight gradients) costs twice the forward",
    "ignored": "augmentation (DSA/IDC), NCFM's sampling net, optimiser steps, k-means (2 n k d per pass: "
               "under 0.01 % of the total), data loading (assumed overlapped by loader workers)",
}

SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
          "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
          "norm_num_groups": 32}
"""The architecture of the Stable Diffusion v1 VAE (f8, 4 latent channels), the VAE the shipped config names."""


def forward_flops(fn: Any, *args: torch.Tensor) -> int:
    """FLOPs of one call ``fn(*args)`` (multiply-adds count two), without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def network_flops(size: int = 128, *, vae_arch: dict[str, Any] | None = None) -> dict[str, int]:
    """FLOPs per image of every network the ImageNet shape runs, at ``size`` px (the teacher at 224)."""
    import torchvision
    from diffusers import AutoencoderKL

    from flows.config import load_config

    cfg = load_config(str(REPO / "configs" / "imagenet1k.yaml"))
    x = torch.zeros(1, 3, size, size)
    ncfm = cfg.method_config("ncfm", 10).network_spec.build(channels=3, num_classes=1000, image_size=size, seed=0)
    student = cfg.evaluation.network_spec.build(channels=3, num_classes=1000, image_size=size, seed=0)
    teacher = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, sample_size=size, **(vae_arch or SD_VAE)).eval()
    z = vae.encode(x).latent_dist.mode()
    return {"ncfm_net": forward_flops(ncfm.eval(), x), "student": forward_flops(student.eval(), x),
            "teacher": forward_flops(teacher.eval(), torch.zeros(1, 3, 224, 224)),
            "vae_encode": forward_flops(lambda t: vae.encode(t).latent_dist.mode(), x),
            "vae_decode": forward_flops(lambda t: vae.decode(t).sample, z)}


def stage_work(flops: dict[str, int], a: dict[str, Any] = ASSUMPTIONS) -> list[dict[str, Any]]:
    """The FLOPs of each stage of ``configs/imagenet1k.yaml`` at ImageNet size, with how they were counted and
    how many tasks the stage splits into (what 8 GPUs can run at once)."""
    from flows.config import load_config

    cfg = load_config(str(REPO / "configs" / "imagenet1k.yaml"))
    bwd, k, n_train, n_val = a["backward_factor"], a["classes"], a["train_images"], a["val_images"]
    out: list[dict[str, Any]] = []

    def add(stage: str, total: float, how: str, tasks: int) -> None:
        out.append({"stage": stage, "flops": float(total), "how": how, "tasks": tasks})

    add("encode_latents", (n_train + n_val) * flops["vae_encode"],
        "(train + val) images x VAE encoder", 1)
    ncfm_total, decode_total, eval_total, n_rounds = 0.0, 0.0, 0.0, 0
    e = cfg.evaluation
    for ipc in cfg.ipcs:
        m = cfg.method_config("ncfm", ipc)
        f2 = m.ncfm.factor ** 2
        ncfm_total += m.iterations * k * (m.batch_real + (1 + bwd) * f2 * ipc) * flops["ncfm_net"]
        decode_total += 2 * ipc * k * flops["vae_decode"]  # DDOQ and D4M each decode IPC images per class
        sets = {"ncfm": f2 * ipc * k, "ddoq": ipc * k, "d4m": ipc * k, "random": ipc * k}
        soft = set(cfg.soft_labels.methods) if cfg.soft_labels else set()
        rows = [(n, False) for n in sets] + [(n, True) for n in sets if n in soft]
        rows += [("random", False), ("random", True)] if cfg.random_baseline else []  # the IOR baselines
        for name, is_soft in rows:
            train = e.epochs * sets[name] * ((1 + bwd) * flops["student"] + (flops["teacher"] if is_soft else 0))
            eval_total += e.num_eval * (train + n_val * flops["student"])
            n_rounds += e.num_eval
    iters = cfg.method_config("ncfm", cfg.ipcs[0]).iterations
    add("distill ncfm", ncfm_total, f"IPC {cfg.ipcs}: {iters} iterations x {k} classes x (batch_real real "
        "forwards + factor^2 x IPC synthetic forward+backward) x ConvNet-5", cfg.class_groups)
    add("distill ddoq+d4m", decode_total, "decode IPC x classes images per method and IPC (k-means ignored)", 1)
    add("evaluate", eval_total, f"{n_rounds} rounds: epochs x set size x (student forward+backward [+ teacher "
        "forward for soft rows]) + val images x student forward", n_rounds)
    return out


def project(work: list[dict[str, Any]], gpus: int, a: dict[str, Any] = ASSUMPTIONS) -> list[dict[str, Any]]:
    """Hours of each stage on ``gpus`` GPUs: a stage of ``tasks`` independent tasks uses ``min(gpus, tasks)`` of
    them (the class groups, the evaluation rounds), perfectly balanced; a one-task stage uses one."""
    rate = a["gpu_tflops_achieved"] * 1e12
    return [{"stage": w["stage"], "gpus_used": min(gpus, w["tasks"]),
             "hours": w["flops"] / rate / min(gpus, w["tasks"]) / 3600} for w in work]


def cpu_anchor(scale: dict[str, Any]) -> dict[str, Any]:
    """This machine's achieved rate on the micro run's largest point: FLOPs of its encoding (the small VAE at
    64 px over train + val) over the measured encode_latents time."""
    from ddcore.latent.vae import VAEConfig, build_vae

    rows = [r for r in scale["rows"] if r["stage"] == "encode_latents" and r["size"] == 64]
    if not rows:
        return {}
    r = max(rows, key=lambda r: r["classes"] * r["images_per_class"])
    vae = build_vae(VAEConfig(), 3, 64).eval()
    per = forward_flops(lambda t: vae.encode(t).latent_dist.mode(), torch.zeros(1, 3, 64, 64))
    images = r["classes"] * (r["images_per_class"] + max(2, r["images_per_class"] // 5))
    return {"point": f"{r['classes']}x{r['images_per_class']}@64", "stage": "encode_latents",
            "flops_per_image": per, "images": images, "seconds": r["seconds"],
            "achieved_gflops": round(per * images / r["seconds"] / 1e9, 1)}


def main() -> None:
    scale = json.loads(SCALE_JSON.read_text()) if SCALE_JSON.exists() else {}
    flops = network_flops()
    work = stage_work(flops)
    total = sum(w["flops"] for w in work)
    result = {"assumptions": ASSUMPTIONS, "flops_per_image": flops, "work": work, "total_flops": total,
              "hours": {str(g): project(work, g) for g in (1, 8)}, "cpu_anchor": cpu_anchor(scale) if scale else {}}
    print(f"{'network':<12} {'GFLOPs/image':>13}")
    for name, f in flops.items():
        print(f"{name:<12} {f / 1e9:>13.2f}")
    print(f"\n{'stage':<18} {'PFLOPs':>10} {'1 GPU h':>9} {'8 GPUs h':>9}")
    for w, one, eight in zip(work, result["hours"]["1"], result["hours"]["8"], strict=True):
        print(f"{w['stage']:<18} {w['flops'] / 1e15:>10.1f} {one['hours']:>9.2f} {eight['hours']:>9.2f}")
    print(f"{'total':<18} {total / 1e15:>10.1f} {sum(h['hours'] for h in result['hours']['1']):>9.2f} "
          f"{sum(h['hours'] for h in result['hours']['8']):>9.2f}")
    if result["cpu_anchor"]:
        print(f"\nthis machine: {result['cpu_anchor']['achieved_gflops']} GFLOP/s achieved in encode_latents")
    if scale:
        scale["projection"] = result
        write_json(SCALE_JSON, scale, indent=1)
        print(f"wrote the projection into {SCALE_JSON}")
    else:
        print(f"{SCALE_JSON} not found: run benchmarks/scale.py first; nothing written")


if __name__ == "__main__":
    main()
