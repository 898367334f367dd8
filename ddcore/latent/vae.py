"""A small diffusers ``AutoencoderKL``: config, build, train (with resume), save/load, encode/decode.

Pixel conventions (read this before calling):

- :func:`encode` takes **pixel-space** float images in ``[0, 1]``, shape ``[B, C, H, W]`` (NOT the
  ``(pixel - mean) / std`` space methods use; convert with ``x * std + mean`` first). It maps them to
  ``[-1, 1]`` internally, which is what diffusers VAEs expect.
- :func:`decode` returns pixel-space ``[0, 1]`` images (clamped unless ``clamp=False``).
- Latents are ``(posterior - shift_factor) * scaling_factor`` (the Stable Diffusion convention, so a
  diffusion UNet sees the same scale as in SD), shape ``[B, latent_channels, H', W']``.

Sizes: the VAE downsamples by ``2 ** (len(block_out_channels) - 1)``. Inputs whose height or width is
not a multiple of that factor are replicate-padded (centred) up to the next multiple before encoding;
pass ``image_size`` to :func:`decode` to crop the output back. Fashion-MNIST 28x28 with the default
3-block config (factor 4) needs no padding and gives ``[4, 7, 7]`` latents; with 4 blocks (factor 8)
it is padded to 32x32. A 1-channel image fed to a 3-channel (e.g. pretrained SD) VAE is repeated to 3
channels; ``decode(..., channels=1)`` averages the output channels back.

Pretrained weights are only ever read from a local folder (``config.json`` + weights); hub ids are
refused with a :class:`~ddcore.errors.WeightsError` and nothing is downloaded. Checking, loading, digesting
and atomically replacing such folders is done by :mod:`ddcore.latent.folders` (its names are re-exported here).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ddcore.checkpoint import checkpoint_file, resume_model, save_state
from ddcore.config import StageConfig
from ddcore.data import storage
from ddcore.errors import DataError, DistillationError
from ddcore.latent.folders import (
    WEIGHT_FILES,  # noqa: F401 - re-exported; import it from ddcore.latent.folders
    check_model_folder,  # noqa: F401 - re-exported; import it from ddcore.latent.folders
    folder_digest,  # noqa: F401 - re-exported; import it from ddcore.latent.folders
    load_model_folder,
    local_folder,
    save_folder_atomic,
)
from ddcore.latent.identity import IdentityAutoencoder, is_identity_folder
from ddcore.seeding import derive_seed
from ddcore.threads import CpuThreads

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "CHECKPOINT_NAME", "WEIGHT_FILES", "TrainData", "TrainStats", "VAEConfig", "build_vae", "check_model_folder",
    "decode", "downsample_factor", "encode", "folder_digest", "import_diffusers", "load_model_folder",
    "load_pretrained_vae", "save_folder_atomic", "save_vae", "to_vae_input", "train_vae",
]

CHECKPOINT_NAME = "vae_train_state.pt"


class VAEConfig(StageConfig, CpuThreads):
    """How to obtain the VAE. ``source='pretrained'`` loads ``pretrained_path`` (a local folder);
    ``source='identity'`` uses no VAE at all (latents are the pixels, :mod:`ddcore.latent.identity`: the
    pixel-space reference for DDOQ/D4M); ``source='train'`` builds the small architecture below and trains
    it on the real data.

    Objective (LDM-style, without LPIPS/GAN): ``E_batch[sum_pixels rec(x, x_hat)] + kl_weight *
    E_batch[KL(q(z|x) || N(0, I))]`` with ``rec`` = ``|.|`` (``l1``) or ``(.)^2`` (``l2``).
    """

    source: Literal["train", "pretrained", "identity"] = "train"
    pretrained_path: str | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    mid_block_attention: bool = True
    recon_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = Field(1e-6, ge=0.0)  # LDM's KL-f8 autoencoder setting
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)  # torch AdamW default
    seed: int = 0
    scaling_factor: float = Field(0.18215, gt=0.0)  # SD v1.x value
    max_train_per_class: int | None = Field(None, ge=1)  # train on a seeded subset (None: every image)

    @model_validator(mode="after")
    def _check(self) -> VAEConfig:
        if self.source == "pretrained" and not self.pretrained_path:
            raise ValueError("source 'pretrained' needs pretrained_path (a local VAE folder)")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block_out_channels entry must be a multiple of norm_num_groups")
        return self


@dataclass
class TrainStats:
    """What :func:`train_vae` did. Per-epoch lists cover every epoch so far (resumed ones included);
    ``epoch_recon`` is the mean per-pixel reconstruction error (l1 or l2) in ``[-1, 1]`` space."""

    start_epoch: int
    epochs_run: int
    steps: int
    epoch_loss: list[float] = field(default_factory=list)
    epoch_recon: list[float] = field(default_factory=list)
    epoch_kl: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    seeds: dict[str, int] = field(default_factory=dict)


def import_diffusers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers

    return diffusers


def downsample_factor(vae: AutoencoderKL) -> int:
    """Spatial factor between images and latents: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def build_vae(cfg: VAEConfig, channels: int, image_size: int | tuple[int, int]) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` (init seeded by ``cfg.seed``) for ``channels``-channel
    images of ``image_size``; ``sample_size`` records the padded size. ``source='identity'`` gives the
    :class:`~ddcore.latent.identity.IdentityAutoencoder` (nothing to train)."""
    f = 2 ** (len(cfg.block_out_channels) - 1)
    h, w = _hw(image_size)
    if cfg.source == "identity":
        return IdentityAutoencoder(channels, max(h, w))  # type: ignore[return-value]
    n = len(cfg.block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return import_diffusers().AutoencoderKL(
            in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_num_groups, sample_size=max(-(-h // f) * f, -(-w // f) * f),
            scaling_factor=cfg.scaling_factor, mid_block_add_attention=cfg.mid_block_attention,
        )


# ----------------------------------------------------------------------------- save / load
def load_pretrained_vae(path: str | Path) -> AutoencoderKL:
    """Load an ``AutoencoderKL`` from a local folder (never the hub; sets ``HF_HUB_OFFLINE=1`` unless
    the user set it), or the identity autoencoder from a folder that names it. Missing / incomplete /
    corrupt folders raise one-line :class:`WeightsError`. An fsspec URL is read through a local copy."""
    if storage.is_url(path):
        with local_folder(path) as copy:
            return load_pretrained_vae(copy)
    if is_identity_folder(path):
        return load_model_folder(IdentityAutoencoder, path, what="VAE")
    return load_model_folder(import_diffusers().AutoencoderKL, path, what="VAE")


def save_vae(vae: AutoencoderKL, folder: str | Path) -> str:
    """``save_pretrained`` (safetensors) into ``folder`` atomically; returns :func:`folder_digest`."""
    return save_folder_atomic(folder, lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))


# ----------------------------------------------------------------------------- encode / decode
def _param(vae: torch.nn.Module) -> torch.Tensor:
    return next(vae.parameters())


def to_vae_input(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Pixel ``[0, 1]`` ``[B, C, H, W]`` -> ``[-1, 1]``, channel-adapted and padded to the factor."""
    if x.ndim != 4:
        raise DataError(f"VAE input must be [B, C, H, W], got shape {tuple(x.shape)}; reshape the batch")
    c_in = vae.config.in_channels
    if x.shape[1] != c_in:
        if x.shape[1] != 1:
            raise DataError(f"VAE expects {c_in} channels, got {x.shape[1]}; build a VAE for {x.shape[1]}")
        x = x.expand(-1, c_in, -1, -1)
    p = _param(vae)
    x = x.to(device=p.device, dtype=p.dtype) * 2.0 - 1.0
    f = downsample_factor(vae)
    ph, pw = (-x.shape[2]) % f, (-x.shape[3]) % f
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    return x


def encode(
    vae: AutoencoderKL, x: torch.Tensor, *, sample: bool = False,
    generator: torch.Generator | None = None, chunk: int = 256,
) -> torch.Tensor:
    """Pixel ``[0, 1]`` images ``[B, C, H, W]`` -> scaled latents ``[B, c, h, w]`` (no grad).

    ``sample=False`` returns the posterior mean (deterministic); ``sample=True`` draws from the
    posterior with ``generator``.
    """
    shift = vae.config.get("shift_factor", None) or 0.0
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            post = vae.encode(to_vae_input(vae, x[i : i + chunk])).latent_dist
            z = post.sample(generator=generator) if sample else post.mode()
            outs.append((z - shift) * vae.config.scaling_factor)
    return torch.cat(outs) if outs else x.new_zeros((0,))


def decode(
    vae: AutoencoderKL, z: torch.Tensor, *, image_size: int | tuple[int, int] | None = None,
    channels: int | None = None, clamp: bool = True, chunk: int = 256,
) -> torch.Tensor:
    """Scaled latents ``[B, c, h, w]`` -> pixel images ``[B, C, H, W]`` in ``[0, 1]`` (no grad).

    ``image_size`` centre-crops away the padding :func:`encode` added; ``channels=1`` averages a
    multi-channel output down to one channel.
    """
    shift = vae.config.get("shift_factor", None) or 0.0
    p = _param(vae)
    outs = []
    with torch.no_grad():
        for i in range(0, z.shape[0], chunk):
            zi = z[i : i + chunk].to(device=p.device, dtype=p.dtype)
            outs.append(vae.decode(zi / vae.config.scaling_factor + shift).sample.float())
    x = (torch.cat(outs) + 1.0) / 2.0
    if image_size is not None:
        h, w = _hw(image_size)
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        x = x[:, :, top : top + h, left : left + w]
    if channels is not None and channels != x.shape[1]:
        if channels != 1:
            raise DataError(f"cannot map {x.shape[1]} decoded channels to {channels}; use a matching VAE")
        x = x.mean(dim=1, keepdim=True)
    return x.clamp(0.0, 1.0) if clamp else x


def float64_decoder(vae: AutoencoderKL) -> AutoencoderKL:
    """A float64 copy of ``vae`` for :func:`decode`: decoded pixels (returned as float32) then do not depend
    on the thread count, whose reduction order moves float32 results by an ulp."""
    return copy.deepcopy(vae).double()


# ----------------------------------------------------------------------------- training
TrainData = Any  # torch.Tensor | RealSampler | Callable[[int], Iterable[Tensor]] | Iterable[Tensor]


def _epoch_batches(data: TrainData, epoch: int, cfg: VAEConfig) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "vae-data", epoch))
    if isinstance(data, torch.Tensor):
        perm = torch.randperm(data.shape[0], generator=gen)
        for i in range(0, perm.numel(), cfg.batch_size):
            yield data[perm[i : i + cfg.batch_size]]
    elif hasattr(data, "class_size") and hasattr(data, "get"):  # RealSampler: normalised -> pixel
        mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
        sizes = torch.tensor([data.class_size(c) for c in range(data.num_classes)])
        cls = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        pos = torch.cat([torch.arange(int(s)) for s in sizes]) if len(sizes) else cls
        perm = torch.randperm(cls.numel(), generator=gen)
        for i in range(0, perm.numel(), cfg.batch_size):
            sel = perm[i : i + cfg.batch_size]
            parts = [data.get(int(c), pos[sel][cls[sel] == c]) for c in torch.unique(cls[sel])]
            yield torch.cat(parts).float() * std + mean
    else:
        batches = data(epoch) if callable(data) else data
        for b in batches:
            yield b[0] if isinstance(b, tuple | list) else b


def _objective(vae: AutoencoderKL, x: torch.Tensor, cfg: VAEConfig, g: torch.Generator):
    xin = to_vae_input(vae, x)
    post = vae.encode(xin).latent_dist
    rec = vae.decode(post.sample(generator=g)).sample
    err = (rec - xin).abs() if cfg.recon_loss == "l1" else (rec - xin).pow(2)
    nll = err.flatten(1).sum(1).mean()
    kl = post.kl().mean()
    return nll + cfg.kl_weight * kl, err.mean(), kl


def _resume(path: Path, vae: torch.nn.Module, opt: torch.optim.Optimizer, key: str) -> dict[str, Any] | None:
    return resume_model(path, vae, opt, key, what="VAE checkpoint", other="a different VAE config")


def train_vae(
    vae: AutoencoderKL, data: TrainData, cfg: VAEConfig, *, checkpoint_dir: str | Path | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainStats:
    """Train ``vae`` in place for ``cfg.epochs`` epochs with AdamW (seeded; resumable).

    ``data`` is one of: a pixel ``[0, 1]`` tensor ``[N, C, H, W]`` (re-shuffled each epoch from
    ``derive_seed(seed, 'vae-data', epoch)``); a ``RealSampler`` (normalised images, mapped back to
    pixels with its mean/std; same shuffling); a callable ``epoch -> iterable of pixel batches``; or a
    re-iterable of pixel batches (``(x, y)`` tuples are accepted; ``x`` is used). The posterior noise
    of epoch ``e`` comes from ``derive_seed(seed, 'vae-noise', e)``. With ``checkpoint_dir`` the full
    state (model, optimiser, history) is saved atomically after each epoch and training resumes from
    it, giving the same weights as an uninterrupted run. ``progress(epoch, metrics)`` is called after
    each epoch.
    """
    p = _param(vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    key = cfg.model_copy(update={"epochs": 0}).digest()
    ckpt = checkpoint_file(checkpoint_dir, CHECKPOINT_NAME)
    state = _resume(ckpt, vae, opt, key) if ckpt is not None else None
    hist = state["history"] if state else {"loss": [], "recon": [], "kl": []}
    start = int(state["epoch"]) if state else 0
    seeds = {"init": cfg.seed, "data": cfg.seed, "noise": cfg.seed}
    stats = TrainStats(start_epoch=start, epochs_run=0, steps=0, seeds=seeds)
    t0 = time.perf_counter()
    vae.train()
    for epoch in range(start, cfg.epochs):
        g = torch.Generator(device=p.device).manual_seed(derive_seed(cfg.seed, "vae-noise", epoch))
        tot = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        n = 0
        for x in _epoch_batches(data, epoch, cfg):
            loss, rec, kl = _objective(vae, x, cfg, g)
            if not torch.isfinite(loss):
                msg = f"VAE training diverged at epoch {epoch} (loss {loss.item()}); lower vae.lr"
                raise DistillationError(msg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("recon", rec), ("kl", kl)):
                tot[k] += float(v.detach()) * x.shape[0]
            n += x.shape[0]
            stats.steps += 1
        if n == 0:
            msg = f"VAE training data gave no batches in epoch {epoch}; pass a tensor, sampler or callable"
            raise DataError(msg)
        for k in tot:
            hist[k].append(tot[k] / n)
        stats.epochs_run += 1
        if ckpt is not None:
            save_state(ckpt, {"config_key": key, "epoch": epoch + 1, "model": vae.state_dict(),
                              "optim": opt.state_dict(), "history": hist})
        if progress is not None:
            progress(epoch, {k: v[-1] for k, v in hist.items()})
    vae.eval()
    stats.seconds = time.perf_counter() - t0
    stats.seconds_per_step = stats.seconds / max(stats.steps, 1)
    stats.epoch_loss, stats.epoch_recon, stats.epoch_kl = hist["loss"], hist["recon"], hist["kl"]
    return stats
