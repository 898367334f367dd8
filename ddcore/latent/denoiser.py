"""A small latent diffusion denoiser (diffusers ``UNet2DModel``) trained on VAE latents, for the pushforward.

D4M decodes its k-means centroids through Stable Diffusion's img2img; ddflow trains its own small UNet on the
run's latents instead and uses it in :func:`ddcore.latent.pushforward.img2img_latents`. This module has the
config (:class:`DenoiserConfig`), the model and scheduler builders, the training loop
(:func:`train_denoiser`, resumable per epoch) and :func:`fit_denoiser`, which builds, trains and saves a
denoiser folder in the layout of :func:`ddcore.latent.pushforward.save_denoiser` plus ``training.json``.

Objective: the DDPM epsilon-prediction loss. For a batch of scaled latents ``z0 [B, c, h, w]`` (padded to the
UNet's factor, see below), timesteps ``t ~ U{0, ..., T'-1}`` and noise ``eps ~ N(0, I)``::

    z_t = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * eps          abar_t = prod_{s <= t} (1 - beta_s)
    loss = mean((unet(z_t, t, y) - eps) ** 2)

``T'`` is ``num_train_timesteps`` unless ``max_train_timestep`` lowers it: img2img at strength ``s`` only
visits ``t < s * num_train_timesteps`` (a 50-step DDIM at 0.5 starts at t = 480), so a denoiser used at
``s <= T' / num_train_timesteps`` spends all its steps on the noise levels it is used at.

With ``class_conditional`` the UNet gets ``num_class_embeds = num_classes + 1`` embeddings and each label is
replaced by the null class ``num_classes`` with probability ``label_dropout`` (classifier-free guidance in
img2img needs the unconditional prediction). The betas come from the scheduler the folder is saved with, so
training and sampling use the same ``abar_t``.

Latent sizes: latents are replicate-padded (centred) to a multiple of the UNet factor
``2 ** (len(block_out_channels) - 1)`` before noising (:func:`ddcore.latent.pushforward.pad_to_factor`),
exactly as img2img pads them, and the loss covers the padded latent. A ``[4, 7, 7]`` latent with the default
two blocks (factor 2) is trained and denoised as ``[4, 8, 8]``.

Randomness: the UNet's initial weights from ``derive_seed(seed, 'denoiser-init')`` (global RNG forked and
restored), the subset from ``'denoiser-subset'``, epoch ``e``'s order from ``('denoiser-data', e)`` and its
timesteps, noise and label dropout from ``('denoiser-noise', e)``, all drawn on the CPU, so a run resumed
from an epoch checkpoint gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from ddcore.checkpoint import checkpoint_file, resume_model, save_state
from ddcore.config import StageConfig
from ddcore.errors import DataError, DistillationError
from ddcore.latent.pushforward import SCHEDULERS, pad_to_factor, save_denoiser
from ddcore.latent.vae import import_diffusers
from ddcore.seeding import derive_seed
from ddcore.threads import CpuThreads

if TYPE_CHECKING:
    from diffusers import UNet2DModel

CHECKPOINT_NAME = "denoiser_train_state.pt"
Progress = Callable[[int, dict[str, float]], None]


class DenoiserConfig(StageConfig, CpuThreads):
    """How the pushforward's UNet is built and trained (defaults [D]: a small 2-level UNet, Stable Diffusion's
    1000-step ``scaled_linear`` betas, DDIM sampling, AdamW at 2e-4 with gradient clipping at 1)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    class_conditional: bool = True
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    scheduler: str = "DDIMScheduler"
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = Field(0.00085, gt=0.0)
    beta_end: float = Field(0.012, gt=0.0, lt=1.0)
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    seed: int = 0
    max_train_per_class: int | None = Field(None, ge=1)  # train on a seeded subset (None: every latent)
    max_train_timestep: int | None = Field(None, ge=1)  # train on t < this only (None: every timestep)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; choose from {', '.join(SCHEDULERS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> DenoiserConfig:
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block_out_channels entry must be a multiple of norm_num_groups")
        if self.max_train_timestep is not None and self.max_train_timestep > self.num_train_timesteps:
            raise ValueError("max_train_timestep must be at most num_train_timesteps")
        return self

    @property
    def trained_timesteps(self) -> int:
        """Timesteps ``t`` are drawn from ``[0, trained_timesteps)``: ``max_train_timestep`` or all of them."""
        return self.num_train_timesteps if self.max_train_timestep is None else self.max_train_timestep

    @property
    def factor(self) -> int:
        """Spatial downsampling factor of the UNet: ``2 ** (len(block_out_channels) - 1)``."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class DenoiserStats:
    """What :func:`train_denoiser` did. ``epoch_loss`` covers every epoch so far (resumed ones included)."""

    start_epoch: int
    epochs_run: int
    steps: int
    n_train: int
    data_digest: str
    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seeds: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TensorLatents:
    """In-memory latents ``[N, c, h, w]`` and labels int64 ``[N]`` with the reader's ``read(rows)`` API."""

    latents: torch.Tensor
    labels: np.ndarray

    def read(self, rows: np.ndarray) -> torch.Tensor:
        return self.latents[torch.from_numpy(np.asarray(rows, dtype=np.int64))]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @cached_property
    def digest(self) -> str:
        """sha256 over the float32 latents' bytes and the int64 labels' bytes."""
        h = hashlib.sha256(self.latents.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()


LatentSource = Any
"""A :class:`ddcore.latent.reader.LatentArtifact`, a :class:`TensorLatents` or a ``(latents, labels)`` pair:
anything with ``labels`` (int64 ``[N]``), ``read(rows) -> [n, c, h, w]``, ``latent_shape`` and ``digest``."""


def as_source(data: LatentSource) -> Any:
    """``data`` as an object with ``labels``, ``read``, ``latent_shape`` and ``digest`` (tuples are wrapped)."""
    if isinstance(data, tuple | list):
        z, y = data
        if z.ndim != 4 or y.shape != (z.shape[0],):
            raise DataError(f"denoiser data must be latents [N, c, h, w] and labels [N], got {tuple(z.shape)} and "
                            f"{tuple(y.shape)}; pass matching tensors")
        return TensorLatents(z, np.asarray(torch.as_tensor(y).cpu(), dtype=np.int64))
    return data


def training_rows(labels: np.ndarray, cfg: DenoiserConfig) -> np.ndarray:
    """Rows trained on (sorted int64): all, or per class a seeded subset of ``max_train_per_class``
    (``derive_seed(seed, 'denoiser-subset')``, classes in increasing order)."""
    labels = np.asarray(labels, dtype=np.int64)
    if cfg.max_train_per_class is None:
        return np.arange(labels.size, dtype=np.int64)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "denoiser-subset"))
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep.append(rows[torch.randperm(rows.size, generator=g)[: cfg.max_train_per_class].numpy()])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- models
def padded_size(latent_size: int | tuple[int, int], factor: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``factor`` (what :func:`pad_to_factor` gives)."""
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    return -(-int(h) // factor) * factor, -(-int(w) // factor) * factor


def build_unet(cfg: DenoiserConfig, latent_channels: int, latent_size: int | tuple[int, int],
               num_classes: int | None) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` (init from ``derive_seed(cfg.seed, 'denoiser-init')``) for latents
    ``[latent_channels, *latent_size]``; ``sample_size`` is the padded size. Class-conditional (``num_class_embeds
    = num_classes + 1``, the last index is the null class) when ``cfg.class_conditional`` and ``num_classes``."""
    n = len(cfg.block_out_channels)
    cond = cfg.class_conditional and num_classes is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "denoiser-init"))
        return import_diffusers().UNet2DModel(
            sample_size=max(padded_size(latent_size, cfg.factor)), in_channels=latent_channels,
            out_channels=latent_channels, layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.block_out_channels), down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n, norm_num_groups=cfg.norm_num_groups,
            num_class_embeds=int(num_classes) + 1 if cond else None,  # type: ignore[arg-type]
        )


def build_scheduler(cfg: DenoiserConfig) -> Any:
    """The sampling scheduler ``cfg.scheduler`` with the config's betas, epsilon prediction, and (where the
    class has it) ``clip_sample=False``, as for latent diffusion (latents are not confined to [-1, 1])."""
    cls = getattr(import_diffusers(), cfg.scheduler)
    kw: dict[str, Any] = {"num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
                          "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "prediction_type": "epsilon"}
    if "clip_sample" in inspect.signature(cls.__init__).parameters:
        kw["clip_sample"] = False
    return cls(**kw)


# ----------------------------------------------------------------------------- training
def _resume(path: Path, unet: torch.nn.Module, opt: torch.optim.Optimizer, key: str) -> dict[str, Any] | None:
    return resume_model(path, unet, opt, key, what="denoiser checkpoint",
                        other="a different denoiser config or other latents")


def train_denoiser(
    unet: UNet2DModel, data: LatentSource, cfg: DenoiserConfig, *, checkpoint_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> DenoiserStats:
    """Train ``unet`` in place for ``cfg.epochs`` epochs on scaled latents with the epsilon objective (module doc).

    ``data`` (see :data:`LatentSource`): latents ``[N, c, h, w]`` (any float dtype, read in batches and cast to
    float32) with class labels ``[N]`` in ``[0, num_classes)``. With ``checkpoint_dir`` the full state (model,
    optimiser, loss history) is saved atomically after each epoch and training resumes from it; a checkpoint
    of another config or other latents is refused (:class:`ConfigError`). ``progress(epoch, {"loss"})`` is
    called after each epoch. Returns :class:`DenoiserStats`; the UNet is left in eval mode.
    """
    src = as_source(data)
    p = next(unet.parameters())
    rows = training_rows(src.labels, cfg)
    if rows.size == 0:
        raise DataError("the denoiser's training latents are empty; encode the dataset first")
    labels = torch.from_numpy(np.asarray(src.labels, dtype=np.int64))
    n_emb = unet.config.num_class_embeds
    null = None if n_emb is None else int(n_emb) - 1
    if null is not None and int(labels[torch.from_numpy(rows)].max()) >= null:
        raise DataError(f"latent labels reach {int(labels.max())} but the UNet has {null} classes; "
                        "build it with the data's class count")
    alphas = build_scheduler(cfg).alphas_cumprod.to(torch.float32)
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    key = hashlib.sha256(f"{cfg.model_copy(update={'epochs': 0}).digest()}:{src.digest}".encode()).hexdigest()
    ckpt = checkpoint_file(checkpoint_dir, CHECKPOINT_NAME)
    state = _resume(ckpt, unet, opt, key) if ckpt is not None else None
    hist: list[float] = list(state["history"]) if state else []
    start = int(state["epoch"]) if state else 0
    seeds = {"init": derive_seed(cfg.seed, "denoiser-init"), "data": cfg.seed, "noise": cfg.seed}
    if cfg.max_train_per_class is not None:
        seeds["subset"] = derive_seed(cfg.seed, "denoiser-subset")
    stats = DenoiserStats(start_epoch=start, epochs_run=0, steps=0, n_train=int(rows.size), data_digest=src.digest,
                          seeds=seeds)
    t0 = time.perf_counter()
    unet.train()
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(rows.size, generator=torch.Generator().manual_seed(
            derive_seed(cfg.seed, "denoiser-data", epoch))).numpy()
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "denoiser-noise", epoch))
        total, n = 0.0, 0
        for i in range(0, rows.size, cfg.batch_size):
            sel = np.sort(rows[order[i : i + cfg.batch_size]])
            z0 = pad_to_factor(src.read(sel).to(device=p.device, dtype=torch.float32), factor)
            b = z0.shape[0]
            t = torch.randint(0, cfg.trained_timesteps, (b,), generator=g)
            eps = torch.randn(z0.shape, generator=g).to(p.device)
            y = labels[torch.from_numpy(sel)]
            if null is not None:
                y = torch.where(torch.rand(b, generator=g) < cfg.label_dropout, null, y)
            a = alphas[t].view(-1, 1, 1, 1).to(p.device)
            zt = a.sqrt() * z0 + (1.0 - a).sqrt() * eps
            pred = unet(zt.to(p.dtype), t.to(p.device), class_labels=None if null is None else y.to(p.device)).sample
            loss = F.mse_loss(pred.float(), eps)
            if not torch.isfinite(loss):
                raise DistillationError(f"denoiser training diverged at epoch {epoch} (loss {loss.item()}); "
                                        "lower denoiser.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * b
            n += b
            stats.steps += 1
        hist.append(total / n)
        stats.epochs_run += 1
        if ckpt is not None:
            save_state(ckpt, {"config_key": key, "epoch": epoch + 1, "model": unet.state_dict(),
                              "optim": opt.state_dict(), "history": hist})
        if progress is not None:
            progress(epoch, {"loss": hist[-1]})
    unet.eval()
    stats.seconds = time.perf_counter() - t0
    stats.epoch_loss = hist
    return stats


def fit_denoiser(
    data: LatentSource, cfg: DenoiserConfig, out_dir: str | Path, *, num_classes: int | None = None,
    checkpoint_dir: str | Path | None = None, device: str | torch.device = "cpu", progress: Progress | None = None,
) -> tuple[str, DenoiserStats]:
    """Build (:func:`build_unet`), train (:func:`train_denoiser`) and save a denoiser folder at ``out_dir``
    (atomically, :func:`~ddcore.latent.pushforward.save_denoiser`) with ``training.json``: config and its
    digest, the latents' digest, training count, latent shape, loss history and seeds (no timings, so the
    folder's bytes depend only on config and latents). ``num_classes`` defaults to the source's
    ``num_classes`` or ``max(label) + 1``. Returns ``(folder digest, stats)``.
    """
    src = as_source(data)
    if num_classes is None:
        num_classes = getattr(src, "num_classes", None) or int(np.max(src.labels)) + 1
    c, h, w = src.latent_shape
    unet = build_unet(cfg, c, (h, w), num_classes).to(device)
    scheduler = build_scheduler(cfg)
    stats = train_denoiser(unet, src, cfg, checkpoint_dir=checkpoint_dir, progress=progress)
    record = {"config": cfg.model_dump(mode="json"), "config_digest": cfg.digest(), "latents_digest": src.digest,
              "n_train": stats.n_train, "num_classes": num_classes, "latent_shape": [c, h, w],
              "padded_shape": [c, *padded_size((h, w), cfg.factor)], "history": {"loss": stats.epoch_loss},
              "seeds": stats.seeds}
    return save_denoiser(out_dir, unet, scheduler, record=record), stats
