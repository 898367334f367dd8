"""DDOQ / D4M as a method: per-class quantization of an encoded latent artifact, decoded into a weighted set
(directly, or through the img2img pushforward with the run's denoiser), with the W2 of the weighted and the
uniform quantizer measured on the same centroids.

:func:`distill_from_latents` is the entry point the method registry calls (``ddcore.methods``); it reads a
latent artifact, a VAE folder and (with ``cfg.pushforward``) a denoiser folder made by the pipeline's
``encode_latents`` / ``train_vae`` / ``train_denoiser`` stages and refuses ones that do not belong together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcore.data.artifact import DatasetArtifact
from ddcore.errors import ArtifactError, ConfigError
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq
from ddcore.latent.folders import folder_digest
from ddcore.latent.kmeans import cell_masses, w2_uniform, w2_weighted
from ddcore.latent.pushforward import Pushforward, kept_timesteps, load_pushforward, read_training_record
from ddcore.latent.reader import latents_by_class, open_latents
from ddcore.latent.vae import load_pretrained_vae
from ddcore.seeding import derive_seed
from ddcore.synthetic import SyntheticSet


def w2_report(lat: Any, c: int, centroids: torch.Tensor, masses: torch.Tensor, *, max_points: int,
              seed: int) -> dict[str, float]:
    """W2 of class ``c``'s latents to the weighted (``masses``) and the uniform quantizer on ``centroids``.

    Uses all the class's latents when there are at most ``max_points``, else a seeded subsample
    (``derive_seed(seed, 'w2', c)``) of ``max_points // K * K`` of them. W2^2 is computed exactly
    (:func:`~ddcore.latent.kmeans.w2_weighted` / :func:`~ddcore.latent.kmeans.w2_uniform`) in float64;
    ``reduction = 1 - W2_weighted / W2_uniform`` (on W2, not W2^2). On the full class the masses are the
    Voronoi masses, whose W2 is the minimum over all weights, so ``W2_weighted <= W2_uniform`` holds
    (on a subsample it holds up to sampling noise).
    """
    rows = lat.class_rows(c)
    k = centroids.shape[0]
    if rows.size > max_points:
        m = max(max_points // k * k, k)
        g = torch.Generator().manual_seed(derive_seed(seed, "w2", c))
        rows = np.sort(rows[torch.randperm(rows.size, generator=g)[:m].numpy()])
    x = lat.read(rows).double()
    cent = centroids.double()
    wsq = w2_weighted(x, cent, masses)
    usq = w2_uniform(x, cent)
    wd, ud = float(np.sqrt(max(wsq, 0.0))), float(np.sqrt(max(usq, 0.0)))
    return {"n": int(rows.size), "w2sq_weighted": wsq, "w2sq_uniform": usq, "w2_weighted": wd, "w2_uniform": ud,
            "reduction": 1.0 - wd / ud if ud > 0 else 0.0}


def check_trained_range(pf: Pushforward, max_train_timestep: int | None, *, where: str) -> None:
    """Refuse a pushforward whose first img2img timestep lies beyond what its denoiser was trained on.

    Raises:
        ConfigError: ``strength`` (with ``steps``) starts img2img at ``t >= max_train_timestep``.
    """
    if max_train_timestep is None:
        return
    _, _, timesteps = kept_timesteps(pf.model.scheduler, pf.cfg.steps, pf.cfg.strength)
    if len(timesteps) and int(timesteps[0]) >= max_train_timestep:
        raise ConfigError(f"{where}.pushforward.strength {pf.cfg.strength} starts img2img at t = {int(timesteps[0])}, "
                          f"but the denoiser was trained on t < {max_train_timestep} only; lower the strength or "
                          "raise denoiser.max_train_timestep")


def pushforward_for(lat: Any, denoiser_dir: str | Path | None, vae: Any, cfg: DDOQConfig, *,
                    image_size: tuple[int, int], channels: int,
                    device: str | torch.device = "cpu") -> tuple[Pushforward, dict[str, Any]]:
    """The img2img pushforward of ``cfg.pushforward`` on the denoiser folder ``denoiser_dir`` and what the set
    records about it (settings, resolved seed, noise-seed rule, denoiser digest and scheduler).

    Raises:
        ConfigError: no denoiser folder was given, or the strength reaches noise levels the denoiser was not trained
            on (:func:`check_trained_range`).
        ArtifactError: the folder's ``training.json`` names other latents than ``lat``.
    """
    opts = cfg.pushforward
    assert opts is not None
    if denoiser_dir is None:
        raise ConfigError(f"{cfg.variant}.pushforward needs a denoiser folder; run it through the pipeline (stage "
                          "train_denoiser) or pass denoiser_dir")
    record = read_training_record(denoiser_dir)
    if record is not None and record.get("latents_digest") != lat.digest:
        raise ArtifactError(f"denoiser at {denoiser_dir} was trained on other latents than {lat.uri}; train it on "
                            "these latents (stage train_denoiser)")
    pcfg = opts.with_path(denoiser_dir, seed=cfg.pushforward_seed)
    pf = load_pushforward(pcfg, vae, image_size=image_size, channels=channels, device=device)
    check_trained_range(pf, (record or {}).get("config", {}).get("max_train_timestep"), where=cfg.variant)
    info = {**pcfg.model_dump(mode="json", exclude={"path"}), "denoiser_digest": folder_digest(denoiser_dir),
            "scheduler": type(pf.model.scheduler).__name__, "class_conditional": pf.model.num_classes is not None,
            "noise_seed": "derive_seed(seed, 'pushforward', labels of the call)"}
    return pf, info


def distill_from_latents(artifact: DatasetArtifact, latents_uri: str | Path, vae_dir: str | Path, cfg: DDOQConfig,
                         *, device: str | torch.device = "cpu", read_batch: int = 4096,
                         w2_max_points: int = 2000, denoiser_dir: str | Path | None = None,
                         log: Callable[[int, dict[str, float]], None] | None = None) -> SyntheticSet:
    """DDOQ / D4M on the latents of ``artifact``'s train split.

    Checks that the latents were encoded from this dataset (digest) by this VAE folder (digest), runs
    :func:`~ddcore.latent.ddoq.distill_ddoq` class by class (latents streamed from the shards, k-means on
    ``device``), then measures per class the W2 between the class latents and the weighted (cell masses)
    and uniform (D4M) quantizers on the same centroids (:func:`w2_report`). ``extra["w2"]`` holds the
    per-class reports and their means, ``extra["kmeans_seconds"]`` the quantization time per class.

    With ``cfg.pushforward`` the centroids go through img2img with the denoiser folder ``denoiser_dir`` (made by
    the ``train_denoiser`` stage on these latents) before decoding; ``extra["pushforward"]`` records the
    settings, the resolved seed and the denoiser's digest (:func:`pushforward_for`), ``seeds["pushforward"]``
    the seed.

    Raises:
        ArtifactError: the latents belong to another dataset or another VAE, or the denoiser to other latents
            (one line naming the fix).
        ConfigError: ``cfg.pushforward`` is set but no ``denoiser_dir`` was given.
    """
    lat = open_latents(latents_uri)
    if lat.meta.source.get("digest") != artifact.digest:
        raise ArtifactError(f"latents at {latents_uri} were encoded from another dataset than {artifact.uri}; "
                            "encode this dataset first")
    if lat.meta.vae_digest != folder_digest(vae_dir):
        raise ArtifactError(f"latents at {latents_uri} were encoded with another VAE than {vae_dir}; "
                            "re-encode with this VAE")
    vae = load_pretrained_vae(vae_dir).to(device).eval()
    c, h, w = artifact.meta.image_shape
    pf, pf_info = None, None
    if cfg.pushforward is not None:
        pf, pf_info = pushforward_for(lat, denoiser_dir, vae, cfg, image_size=(h, w), channels=c, device=device)
    res = distill_ddoq(lambda k: latents_by_class(lat, k, read_batch, device=device), vae, cfg,
                       num_classes=artifact.meta.num_classes, mean=tuple(artifact.meta.mean),
                       std=tuple(artifact.meta.std), image_size=(h, w), pushforward=pf, log=log)
    sset = res.synthetic
    reports = [w2_report(lat, k, res.centroids[k], cell_masses(torch.tensor(sset.extra["cell_counts"][k])),
                         max_points=w2_max_points, seed=cfg.seed) for k in range(artifact.meta.num_classes)]
    mean = {key: float(np.mean([r[key] for r in reports])) for key in ("w2_weighted", "w2_uniform", "reduction")}
    sset.extra["w2"] = {
        "per_class": reports, "mean_w2_weighted": mean["w2_weighted"], "mean_w2_uniform": mean["w2_uniform"],
        "mean_reduction": mean["reduction"], "max_points": w2_max_points,
        "note": "W2 in scaled-latent units; reduction = 1 - W2_weighted / W2_uniform on the same centroids",
    }
    sset.extra["kmeans_seconds"] = res.quantize_seconds
    if pf_info is not None:
        sset.extra["pushforward"] = pf_info
    return sset
