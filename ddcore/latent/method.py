"""DDOQ / D4M as a method: per-class quantization of an encoded latent artifact, decoded into a weighted set,
with the W2 of the weighted and the uniform quantizer measured on the same centroids.

:func:`distill_from_latents` is the entry point the method registry calls (``ddcore.methods``); it reads a
latent artifact and a VAE folder made by the pipeline's ``encode_latents`` / ``train_vae`` stages and
refuses a pair that does not belong to the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcore.data.artifact import DatasetArtifact
from ddcore.errors import ArtifactError
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq
from ddcore.latent.folders import folder_digest
from ddcore.latent.kmeans import cell_masses, w2_uniform, w2_weighted
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


def distill_from_latents(artifact: DatasetArtifact, latents_uri: str | Path, vae_dir: str | Path, cfg: DDOQConfig,
                         *, device: str | torch.device = "cpu", read_batch: int = 4096,
                         w2_max_points: int = 2000) -> SyntheticSet:
    """DDOQ / D4M on the latents of ``artifact``'s train split.

    Checks that the latents were encoded from this dataset (digest) by this VAE folder (digest), runs
    :func:`~ddcore.latent.ddoq.distill_ddoq` class by class (latents streamed from the shards, k-means on
    ``device``), then measures per class the W2 between the class latents and the weighted (cell masses)
    and uniform (D4M) quantizers on the same centroids (:func:`w2_report`). ``extra["w2"]`` holds the
    per-class reports and their means, ``extra["kmeans_seconds"]`` the quantization time per class.

    Raises:
        ArtifactError: the latents belong to another dataset or another VAE (one line naming the fix).
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
    res = distill_ddoq(lambda k: latents_by_class(lat, k, read_batch, device=device), vae, cfg,
                       num_classes=artifact.meta.num_classes, mean=tuple(artifact.meta.mean),
                       std=tuple(artifact.meta.std), image_size=(h, w))
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
    return sset
