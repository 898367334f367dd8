"""Glue the orchestration tasks call for the latent pipeline: VAE -> latent shards -> DDOQ synthetic set.

Pure library code (no prefect / mlflow). Every function takes URIs and folders, writes its output
atomically and returns a small flat dict of numbers/strings (the stage metrics).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ddcore.data.artifact import DatasetArtifact
from ddcore.data.loader import ArtifactSampler
from ddcore.data.synthetic_io import save_synthetic
from ddcore.errors import ArtifactError, WeightsError
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq
from ddcore.latent.folders import check_model_folder, folder_digest, save_folder_atomic
from ddcore.latent.kmeans import cell_masses, w2_uniform, w2_weighted
from ddcore.latent.reader import latents_by_class, open_latents
from ddcore.latent.shards import encode_dataset
from ddcore.latent.vae import (
    VAEConfig,
    build_vae,
    decode,
    derive_seed,
    load_pretrained_vae,
    train_vae,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

TRAINING_RECORD = "training.json"
EpochLog = Callable[[int, dict[str, float]], None]
"""``log(epoch, {"loss", "recon", "kl"})`` after each VAE epoch (e.g. ``StageContext.log_metrics``)."""


# ----------------------------------------------------------------------------- VAE
def _training_record(cfg: VAEConfig, dataset_digest: str) -> dict[str, Any]:
    return {"dataset_digest": dataset_digest, "config_digest": cfg.digest(), "config": cfg.model_dump(mode="json")}


def _trained_here(out_dir: Path, record: dict[str, Any]) -> bool:
    try:
        found = json.loads((out_dir / TRAINING_RECORD).read_text())
        check_model_folder(out_dir, class_name="AutoencoderKL")
    except (OSError, ValueError, WeightsError):
        return False
    return all(found.get(k) == record[k] for k in ("dataset_digest", "config_digest"))


def train_or_load_vae(
    dataset_uri: str | Path,
    cfg: VAEConfig,
    out_dir: str | Path,
    *,
    checkpoint_dir: str | Path | None,
    device: str | torch.device = "cpu",
    log: EpochLog | None = None,
) -> tuple[AutoencoderKL, str]:
    """Obtain the VAE and leave it in ``out_dir`` (a local diffusers folder); returns ``(vae, digest)``.

    - ``cfg.source='pretrained'``: ``config.json`` and the weights file of ``cfg.pretrained_path`` are
      copied byte for byte into ``out_dir`` (atomically) and loaded; the digest is
      :func:`~ddcore.latent.folders.folder_digest` of ``out_dir`` (those two files).
    - ``cfg.source='train'``: if ``out_dir`` already holds a VAE trained with the same config on the same
      dataset digest (``training.json``), it is loaded; otherwise a VAE is built for the dataset's image
      shape and trained on its ``train`` split through :class:`~ddcore.data.loader.ArtifactSampler`
      (resuming from ``checkpoint_dir``), then saved with ``save_pretrained`` plus ``training.json``
      (dataset digest, config, loss history) into ``out_dir`` atomically.

    The returned VAE is in eval mode on ``device``.
    """
    out = Path(out_dir)
    if cfg.source == "pretrained":
        src = Path(str(cfg.pretrained_path)).expanduser()
        weights = check_model_folder(src, class_name="AutoencoderKL")
        if src.resolve() != out.resolve():
            def copy(tmp: Path) -> None:
                for f in (src / "config.json", weights):
                    shutil.copyfile(f, tmp / f.name)

            save_folder_atomic(out, copy)
        vae = load_pretrained_vae(out)
        return vae.to(device).eval(), folder_digest(out)
    art = DatasetArtifact.open(dataset_uri)
    record = _training_record(cfg, art.digest)
    if _trained_here(out, record):
        return load_pretrained_vae(out).to(device).eval(), folder_digest(out)
    c, h, w = art.meta.image_shape
    vae = build_vae(cfg, c, (h, w)).to(device)
    stats = train_vae(vae, ArtifactSampler(art, "train", keep=_subset(art, cfg)), cfg, checkpoint_dir=checkpoint_dir,
                      progress=log)
    record["history"] = {"loss": stats.epoch_loss, "recon": stats.epoch_recon, "kl": stats.epoch_kl}
    record["seeds"] = stats.seeds

    def write(tmp: Path) -> None:
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))

    digest = save_folder_atomic(out, write)
    return vae.eval(), digest


# ----------------------------------------------------------------------------- encode
def encode_latents_stage(
    dataset_uri: str | Path,
    vae_dir: str | Path,
    out: str | Path,
    *,
    batch_size: int = 256,
    dtype: str = "float16",
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    split: str = "train",
    shard_size: int = 5000,
) -> dict[str, Any]:
    """Encode ``split`` of the dataset with the VAE folder ``vae_dir`` into a latent artifact at ``out``
    (resumable per shard from ``checkpoint_dir``, see :func:`~ddcore.latent.shards.encode_dataset`).

    Returns ``{"n", "encoded", "reused_shards", "seconds", "latents_per_s", "digest", "dtype"}``;
    ``latents_per_s`` counts only the latents encoded by this call.
    """
    art = DatasetArtifact.open(dataset_uri)
    vae = load_pretrained_vae(vae_dir).to(device).eval()
    meta = encode_dataset(art, vae, out, split=split, batch_size=batch_size, dtype=dtype, shard_size=shard_size,
                          work_dir=checkpoint_dir, vae_digest=folder_digest(vae_dir), overwrite=True)
    secs = float(meta.run["seconds"])
    enc = int(meta.run["encoded"])
    return {"n": int(meta.counts["total"]), "encoded": enc, "reused_shards": int(meta.run["reused_shards"]),
            "seconds": secs, "latents_per_s": enc / secs if secs > 0 and enc else 0.0,
            "digest": meta.digest, "dtype": meta.dtype}


# ----------------------------------------------------------------------------- DDOQ
class _DecodeAndKeep:
    """The plain VAE decode :func:`distill_ddoq` does, keeping each class's centroids and timing the
    quantization (everything between two decodes: k-means passes + the exact assignment pass)."""

    def __init__(self, vae: AutoencoderKL, image_size: tuple[int, int], channels: int, chunk: int) -> None:
        self.vae, self.image_size, self.channels, self.chunk = vae, image_size, channels, chunk
        self.centroids: list[torch.Tensor] = []
        self.quantize_seconds: list[float] = []
        self._mark = time.perf_counter()

    def __call__(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.quantize_seconds.append(time.perf_counter() - self._mark)
        self.centroids.append(z.detach().cpu())
        out = decode(self.vae, z, image_size=self.image_size, channels=self.channels, chunk=self.chunk)
        self._mark = time.perf_counter()
        return out


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


def ddoq_stage(
    dataset_uri: str | Path,
    latents_uri: str | Path,
    vae_dir: str | Path,
    cfg: DDOQConfig,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    read_batch: int = 4096,
    w2_max_points: int = 2000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """DDOQ / D4M on the latent artifact, saved as a synthetic-set artifact at ``out``.

    Checks that the latents were encoded from this dataset (digest) by this VAE folder (digest), runs
    :func:`~ddcore.latent.ddoq.distill_ddoq` class by class (latents streamed from the shards, k-means on
    ``device``), then measures per class the W2 between the class latents and the weighted (cell masses)
    and uniform (D4M) quantizers on the same centroids (:func:`w2_report`). The per-class report goes to
    ``sset.extra["w2"]``; ``dataset.json`` keeps it under ``extra``. Image weights follow
    ``cfg.weight_scale`` (``mean_one``: they sum to ``ipc`` per class; ``sum_one``: to 1).

    Returns flat metrics: ``ipc``, ``images``, ``seconds``, ``empty_cells``, ``digest``, the means
    ``w2_weighted``, ``w2_uniform``, ``w2_reduction`` and per class ``w2_weighted_c{c}``,
    ``w2_uniform_c{c}``, ``w2_reduction_c{c}``, ``kmeans_seconds_c{c}``.
    """
    t0 = time.perf_counter()
    art = DatasetArtifact.open(dataset_uri)
    lat = open_latents(latents_uri)
    if lat.meta.source.get("digest") != art.digest:
        raise ArtifactError(f"latents at {latents_uri} were encoded from another dataset than {dataset_uri}; "
                            "encode this dataset first")
    vae_digest = folder_digest(vae_dir)
    if lat.meta.vae_digest != vae_digest:
        raise ArtifactError(f"latents at {latents_uri} were encoded with another VAE than {vae_dir}; "
                            "re-encode with this VAE")
    vae = load_pretrained_vae(vae_dir).to(device).eval()
    c, h, w = art.meta.image_shape
    keep = _DecodeAndKeep(vae, (h, w), c, cfg.decode_batch)
    sset = distill_ddoq(
        lambda k: latents_by_class(lat, k, read_batch, device=device), vae, cfg,
        num_classes=art.meta.num_classes, mean=tuple(art.meta.mean), std=tuple(art.meta.std),
        image_size=(h, w), pushforward=keep,
    )
    reports = []
    for k in range(art.meta.num_classes):
        masses = cell_masses(torch.tensor(sset.extra["cell_counts"][k]))
        reports.append(w2_report(lat, k, keep.centroids[k], masses, max_points=w2_max_points, seed=cfg.seed))
    mean = {key: float(np.mean([r[key] for r in reports])) for key in ("w2_weighted", "w2_uniform", "reduction")}
    sset.extra["w2"] = {
        "per_class": reports, "mean_w2_weighted": mean["w2_weighted"], "mean_w2_uniform": mean["w2_uniform"],
        "mean_reduction": mean["reduction"], "max_points": w2_max_points,
        "note": "W2 in scaled-latent units; reduction = 1 - W2_weighted / W2_uniform on the same centroids",
    }
    sset.extra["kmeans_seconds"] = keep.quantize_seconds
    source = {"name": f"{art.meta.name}-{cfg.variant}-ipc{cfg.ipc}", "kind": cfg.variant,
              "dataset_uri": str(dataset_uri), "dataset_digest": art.digest, "latents_uri": str(latents_uri),
              "latents_digest": lat.digest, "vae_digest": vae_digest}
    meta = save_synthetic(sset, out, classes=list(art.meta.classes), source=source, overwrite=overwrite)
    res: dict[str, Any] = {"ipc": cfg.ipc, "images": int(sset.images.shape[0]), "seconds": time.perf_counter() - t0,
                           "empty_cells": int(sset.extra["empty_cells"]), "digest": meta.digest,
                           "w2_weighted": mean["w2_weighted"], "w2_uniform": mean["w2_uniform"],
                           "w2_reduction": mean["reduction"]}
    for k, r in enumerate(reports):
        res[f"w2_weighted_c{k}"] = r["w2_weighted"]
        res[f"w2_uniform_c{k}"] = r["w2_uniform"]
        res[f"w2_reduction_c{k}"] = r["reduction"]
        res[f"kmeans_seconds_c{k}"] = keep.quantize_seconds[k]
    return res


def _subset(art: DatasetArtifact, cfg: VAEConfig) -> list[np.ndarray] | None:
    """Seeded per-class subset of the train split for VAE training (``max_train_per_class``)."""
    if cfg.max_train_per_class is None:
        return None
    rng = np.random.default_rng(derive_seed(cfg.seed, "vae-subset"))
    return [np.sort(rng.permutation(len(rows))[: cfg.max_train_per_class]) for rows in art.class_rows("train")]
