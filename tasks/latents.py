"""Stages ``train_vae`` and ``encode_latents`` of the latent pipeline (DDOQ and D4M distil in the ``distill``
stage through the method registry).

``train_vae`` trains a small diffusers AutoencoderKL on the dataset (or copies a local pretrained folder) and
saves it with ``save_pretrained``; ``encode_latents`` writes per-sample latents as shards keyed like the
source manifest, resumable per shard. :func:`train_or_load_vae` and :func:`encode_latents_stage` are the
stage bodies on plain paths (the latent benchmark calls them too).
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

from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact
from ddcore.data.loader import ArtifactSampler
from ddcore.errors import WeightsError
from ddcore.latent.folders import check_model_folder, folder_digest, local_folder, save_folder_atomic
from ddcore.latent.identity import CLASS_NAME, is_identity_folder
from ddcore.latent.shards import encode_dataset
from ddcore.latent.vae import VAEConfig, build_vae, load_pretrained_vae, train_vae
from ddcore.seeding import derive_seed
from tasks.configs import EncodeConfig
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

TRAINING_RECORD = "training.json"
EpochLog = Callable[[int, dict[str, float]], None]
"""``log(epoch, {"loss", "recon", "kl"})`` after each VAE epoch (e.g. ``StageContext.log_metrics``)."""


def _training_record(cfg: VAEConfig, dataset_digest: str) -> dict[str, Any]:
    return {"dataset_digest": dataset_digest, "config_digest": cfg.digest(), "config": cfg.model_dump(mode="json")}


def _trained_here(out_dir: str | Path, record: dict[str, Any]) -> bool:
    try:
        with local_folder(out_dir) as here:
            found = json.loads((here / TRAINING_RECORD).read_text())
            check_model_folder(here, class_name=CLASS_NAME if is_identity_folder(here) else "AutoencoderKL")
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
    """Obtain the VAE and leave it in ``out_dir`` (a diffusers folder: a local path or an fsspec URL); returns
    ``(vae, digest)``.

    - ``cfg.source='pretrained'``: ``config.json`` and the weights file of ``cfg.pretrained_path`` are
      copied byte for byte into ``out_dir`` (atomically) and loaded; the digest is
      :func:`~ddcore.latent.folders.folder_digest` of ``out_dir`` (those two files).
    - ``cfg.source='identity'``: the identity autoencoder (pixels as latents) is written the same way,
      with nothing trained.
    - ``cfg.source='train'``: if ``out_dir`` already holds a VAE trained with the same config on the same
      dataset digest (``training.json``), it is loaded; otherwise a VAE is built for the dataset's image
      shape and trained on its ``train`` split through :class:`~ddcore.data.loader.ArtifactSampler`
      (resuming from ``checkpoint_dir``), then saved with ``save_pretrained`` plus ``training.json``
      (dataset digest, config, loss history) into ``out_dir`` atomically.

    The returned VAE is in eval mode on ``device``.
    """
    out = out_dir if fsio.is_url(out_dir) else Path(out_dir)
    if cfg.source == "pretrained":
        src = Path(str(cfg.pretrained_path)).expanduser()
        weights = check_model_folder(src, class_name="AutoencoderKL")
        digest = None
        if fsio.is_url(out) or src.resolve() != Path(out).resolve():
            def copy(tmp: Path) -> None:
                for f in (src / "config.json", weights):
                    shutil.copyfile(f, tmp / f.name)

            digest = save_folder_atomic(out, copy)
        vae = load_pretrained_vae(out)
        return vae.to(device).eval(), digest or folder_digest(out)
    art = DatasetArtifact.open(dataset_uri)
    record = _training_record(cfg, art.digest)
    if _trained_here(out, record):
        return load_pretrained_vae(out).to(device).eval(), folder_digest(out)
    c, h, w = art.meta.image_shape
    vae = build_vae(cfg, c, (h, w)).to(device)
    if cfg.source == "train":
        stats = train_vae(vae, ArtifactSampler(art, "train", keep=_subset(art, cfg)), cfg,
                          checkpoint_dir=checkpoint_dir, progress=log)
        record["history"] = {"loss": stats.epoch_loss, "recon": stats.epoch_recon, "kl": stats.epoch_kl}
        record["seeds"] = stats.seeds

    def write(tmp: Path) -> None:
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))

    digest = save_folder_atomic(out, write)
    return vae.eval(), digest


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
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Encode ``split`` of the dataset with the VAE folder ``vae_dir`` into a latent artifact at ``out``
    (resumable per shard from ``checkpoint_dir``, see :func:`~ddcore.latent.shards.encode_dataset`).

    Returns ``{"n", "encoded", "reused_shards", "seconds", "latents_per_s", "digest", "dtype"}``;
    ``latents_per_s`` counts only the latents encoded by this call.
    """
    art = DatasetArtifact.open(dataset_uri)
    with local_folder(vae_dir) as local_vae:
        vae, vae_digest = load_pretrained_vae(local_vae).to(device).eval(), folder_digest(local_vae)
    meta = encode_dataset(art, vae, out, split=split, batch_size=batch_size, dtype=dtype, shard_size=shard_size,
                          work_dir=checkpoint_dir, vae_digest=vae_digest, overwrite=True, progress=progress)
    secs = float(meta.run["seconds"])
    enc = int(meta.run["encoded"])
    return {"n": int(meta.counts["total"]), "encoded": enc, "reused_shards": int(meta.run["reused_shards"]),
            "seconds": secs, "latents_per_s": enc / secs if secs > 0 and enc else 0.0,
            "digest": meta.digest, "dtype": meta.dtype}


def _subset(art: DatasetArtifact, cfg: VAEConfig) -> list[np.ndarray] | None:
    """Seeded per-class subset of the train split for VAE training (``max_train_per_class``)."""
    if cfg.max_train_per_class is None:
        return None
    rng = np.random.default_rng(derive_seed(cfg.seed, "vae-subset"))
    return [np.sort(rng.permutation(len(rows))[: cfg.max_train_per_class]) for rows in art.class_rows("train")]


def train_vae_stage(inputs: dict[str, ArtifactRef], config: VAEConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    _, digest = train_or_load_vae(inputs["dataset"].uri, config, out, checkpoint_dir=ctx.checkpoint_dir,
                                  device=ctx.device, log=lambda step, m: (ctx.log_metrics(step, m),
                                                                          ctx.progress(step + 1, config.epochs,
                                                                                       "epochs", **m)))
    return {"seconds": time.perf_counter() - t0, "vae_digest": digest}


def encode_stage(inputs: dict[str, ArtifactRef], config: EncodeConfig, out: str, ctx: StageContext) -> dict:
    return encode_latents_stage(inputs["dataset"].uri, inputs["vae"].uri, out, batch_size=config.batch_size,
                                dtype=config.dtype, device=ctx.device, checkpoint_dir=ctx.checkpoint_dir,
                                progress=lambda done, total: ctx.progress(done, total, "images"))


TRAIN_VAE = make_stage_task("train_vae", train_vae_stage, "vae", retries=1, tags=("gpu",))
ENCODE_LATENTS = make_stage_task("encode_latents", encode_stage, "latents", retries=2, tags=("gpu",))
