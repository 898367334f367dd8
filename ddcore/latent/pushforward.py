"""Optional img2img refinement of latent prototypes (the D4M / DDOQ "pushforward" ``D o U_t``).

Instead of a full ``StableDiffusionImg2ImgPipeline`` (text encoder, tokenizer, safety checker from the
hub), this is our own small img2img loop over ``(unet, scheduler, vae)``:

1. ``scheduler.set_timesteps(steps)``; keep the last ``int(steps * strength)`` timesteps;
2. noise the scaled latent prototype ``z0`` to the first kept timestep (``scheduler.add_noise``);
3. denoise with the UNet's epsilon prediction and ``scheduler.step``; with a class-conditional UNet
   and ``guidance > 1`` use classifier-free guidance ``eps_u + guidance * (eps_c - eps_u)``;
4. decode with the VAE (:func:`ddcore.latent.vae.decode`).

Supported: ``diffusers.UNet2DModel`` only, unconditional or class-conditional through
``num_class_embeds``. Class-conditional convention: ``num_class_embeds = num_classes + 1`` and index
``num_classes`` is the null ("unconditional") class used by guidance; the UNet must have been trained
with label dropout to that index for guidance to be meaningful. Schedulers: DDIM, DDPM,
EulerDiscrete, DPMSolverMultistep.

Latent sizes: a UNet with ``n`` blocks downsamples by ``f = 2 ** (n - 1)``. Latents whose height or width is
not a multiple of ``f`` (e.g. ``7 x 7`` from a 28 px image) are replicate-padded, centred, up to the next
multiple (:func:`pad_to_factor`); the diffusion runs on the padded latents and the result is centre-cropped
back (:func:`crop_to`). :func:`ddcore.latent.denoiser.train_denoiser` pads its training latents the same
way, so the UNet sees the same borders in training and in img2img.

Folder layout (written by :func:`save_denoiser`, read by :func:`load_denoiser`, never from the hub)::

    folder/unet/{config.json, diffusion_pytorch_model.safetensors}
    folder/scheduler/scheduler_config.json
    folder/vae/...            (optional; otherwise the caller's VAE is used)
    folder/training.json      (optional; written by the train_denoiser stage: config, latents digest, losses)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data import storage
from ddcore.errors import DataError, WeightsError
from ddcore.latent.folders import load_model_folder, local_folder, save_folder_atomic
from ddcore.latent.vae import decode, float64_decoder, import_diffusers
from ddcore.seeding import derive_seed

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DModel

SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")
TRAINING_RECORD = "training.json"
RETRAIN = "train it again (ddflow run CONFIG --force train_denoiser) or re-save it with save_denoiser"


class PushforwardOptions(StageConfig):
    """img2img settings without the folder (the ``pushforward`` section of a DDOQ / D4M config; the pipeline
    supplies the denoiser folder). Defaults are D4M's (strength 0.7, guidance 8, 50 steps). ``seed=None``:
    the owning config's seed (:meth:`with_path` resolves it)."""

    strength: float = Field(0.7, ge=0.0, le=1.0)
    guidance: float = Field(8.0, ge=0.0)
    steps: int = Field(50, ge=1)
    seed: int | None = None
    batch_size: int = Field(16, ge=1)

    def with_path(self, path: str | Path, *, seed: int = 0) -> PushforwardConfig:
        """These settings on the denoiser folder ``path``; ``seed`` is used when :attr:`seed` is ``None``."""
        data = self.model_dump()
        data["seed"] = seed if self.seed is None else self.seed
        return PushforwardConfig(path=str(path), **data)


class PushforwardConfig(PushforwardOptions):
    """:class:`PushforwardOptions` on a local denoiser folder ``path`` (direct library use)."""

    path: str
    seed: int = 0


@dataclass
class LatentDenoiser:
    """A UNet + scheduler (+ optional VAE) loaded from a local folder."""

    unet: UNet2DModel
    scheduler: Any
    vae: AutoencoderKL | None = None
    num_classes: int | None = None  # None: unconditional

    @property
    def factor(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)


def save_denoiser(
    folder: str | Path, unet: UNet2DModel, scheduler: Any, vae: AutoencoderKL | None = None,
    *, record: Mapping[str, Any] | None = None,
) -> str:
    """Write the folder layout above atomically (``record``, if given, as ``training.json``); returns its
    sha256 digest (:func:`ddcore.latent.folders.folder_digest`)."""

    def write(tmp: Path) -> None:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        if vae is not None:
            vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if record is not None:
            (tmp / TRAINING_RECORD).write_text(json.dumps(dict(record), indent=2, sort_keys=True))

    return save_folder_atomic(folder, write)


def read_training_record(path: str | Path) -> dict[str, Any] | None:
    """``training.json`` of a denoiser folder (local path or fsspec URL), or ``None`` when it has none (a
    hand-made folder)."""
    if storage.is_url(path):
        with local_folder(path) as copy:
            return read_training_record(copy)
    f = Path(path).expanduser() / TRAINING_RECORD
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        raise WeightsError(f"denoiser folder {Path(path)} has an unreadable {TRAINING_RECORD}; {RETRAIN}") from None
    if not isinstance(rec, dict):
        raise WeightsError(f"denoiser folder {Path(path)} has an unreadable {TRAINING_RECORD}; {RETRAIN}")
    return rec


def load_denoiser(path: str | Path) -> LatentDenoiser:
    """Load :class:`LatentDenoiser` from a folder (local path, or an fsspec URL read through a local copy). A
    missing folder, or a missing / corrupt UNet, scheduler or VAE, is one :class:`WeightsError` line naming the
    folder and the fix."""
    if storage.is_url(path):
        with local_folder(path) as copy:
            if not any(copy.iterdir()):
                raise WeightsError(f"denoiser folder not found: {path}; run the train_denoiser stage")
            return load_denoiser(copy)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise WeightsError(f"denoiser folder not found: {root}; run the train_denoiser stage or pass a local folder "
                           "written by save_denoiser")
    d = import_diffusers()
    try:
        unet = load_model_folder(d.UNet2DModel, root / "unet", what="denoiser UNet")
    except WeightsError as exc:
        raise WeightsError(f"denoiser folder {root} is unusable: {str(exc).split('; ')[0]}; {RETRAIN}") from None
    sched_file = root / "scheduler" / "scheduler_config.json"
    try:
        conf = json.loads(sched_file.read_text())
        name = conf["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise WeightsError(
            f"denoiser folder {root} is unusable: scheduler config {sched_file} is missing or unreadable; {RETRAIN}"
        ) from None
    if name not in SCHEDULERS:
        raise WeightsError(
            f"scheduler {name} in {sched_file} is not supported; use one of {', '.join(SCHEDULERS)}"
        )
    scheduler = getattr(d, name).from_config(conf)
    vae = None
    if (root / "vae").exists():
        try:
            vae = load_model_folder(d.AutoencoderKL, root / "vae", what="denoiser VAE")
        except WeightsError as exc:
            raise WeightsError(f"denoiser folder {root} is unusable: {str(exc).split('; ')[0]}; {RETRAIN}") from None
    n_emb = unet.config.num_class_embeds
    if unet.config.class_embed_type is not None:
        raise WeightsError(
            f"UNet in {root} uses class_embed_type={unet.config.class_embed_type}; only "
            "num_class_embeds conditioning is supported"
        )
    return LatentDenoiser(unet, scheduler, vae, None if n_emb is None else int(n_emb) - 1)


def pad_to_factor(z: torch.Tensor, factor: int) -> torch.Tensor:
    """Replicate-pad latents ``[B, c, h, w]`` (centred: the extra row/column goes bottom/right) so that
    height and width are multiples of ``factor``; returned as is when they already are."""
    ph, pw = (-z.shape[2]) % factor, (-z.shape[3]) % factor
    if not (ph or pw):
        return z
    return F.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")


def crop_to(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop ``[B, c, H, W]`` to ``size = (h, w)`` (undoes :func:`pad_to_factor`)."""
    top, left = (z.shape[2] - size[0]) // 2, (z.shape[3] - size[1]) // 2
    return z[:, :, top : top + size[0], left : left + size[1]]


def kept_timesteps(scheduler: Any, steps: int, strength: float,
                   device: str | torch.device = "cpu") -> tuple[Any, int, torch.Tensor]:
    """A fresh copy of ``scheduler`` set to ``steps`` steps, the index of the first step img2img runs at
    ``strength`` and the timesteps it runs (descending; empty at strength 0)."""
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps, device=device)
    t_start = steps - min(int(steps * strength), steps)
    return sched, t_start, sched.timesteps[t_start * sched.order :]


def img2img_latents(
    model: LatentDenoiser,
    z0: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    strength: float,
    guidance: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise scaled latents ``z0 [B, c, h, w]`` to the strength-implied timestep and denoise them.

    ``labels`` int64 ``[B]`` are required for a class-conditional UNet and ignored otherwise. Latents whose
    size is not a multiple of the UNet's factor are padded for the diffusion and cropped back (module doc).
    Returns latents of the same shape (float32). ``strength=0`` (or fewer than one kept step) returns ``z0``
    unchanged: no noise is drawn.
    """
    unet = model.unet
    if z0.shape[1] != unet.config.in_channels:
        raise DataError(
            f"latents have {z0.shape[1]} channels, UNet expects {unet.config.in_channels}; "
            "use the VAE the UNet was trained with"
        )
    p = next(unet.parameters())
    sched, t_start, timesteps = kept_timesteps(model.scheduler, steps, strength, device=p.device)
    z = z0.to(device=p.device, dtype=p.dtype)
    if len(timesteps) == 0:
        return z.float()
    size = (z.shape[2], z.shape[3])
    z = pad_to_factor(z, model.factor)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
    z = sched.add_noise(z, noise.to(device=p.device, dtype=p.dtype), timesteps[:1].repeat(z.shape[0]))
    cond = model.num_classes is not None
    if cond:
        if labels is None:
            raise DataError("this pushforward UNet is class-conditional; pass the class labels")
        labels = labels.to(p.device)
        null = torch.full_like(labels, model.num_classes)
    with torch.no_grad():
        for t in timesteps:
            inp = sched.scale_model_input(z, t)
            if cond and guidance > 1.0:
                eps_c, eps_u = unet(
                    torch.cat([inp, inp]), t, class_labels=torch.cat([labels, null])
                ).sample.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = unet(inp, t, class_labels=labels if cond else None).sample
            z = sched.step(eps, t, z, generator=generator).prev_sample
    return crop_to(z, size).float()


@dataclass
class Pushforward:
    """Callable ``(latents [K, c, h, w], labels [K]) -> pixel images [K, C, H, W] in [0, 1]`` for
    :func:`ddcore.latent.ddoq.distill_ddoq`. Each call draws its noise from a generator seeded with
    ``derive_seed(cfg.seed, 'pushforward', labels)``, so results do not depend on call order;
    ``seeds`` records the base seed."""

    model: LatentDenoiser
    vae: AutoencoderKL
    cfg: PushforwardConfig
    image_size: int | tuple[int, int] | None = None
    channels: int | None = None
    seeds: dict[str, int] = field(default_factory=dict)
    _decoder: Any = field(default=None, repr=False)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.seeds["pushforward"] = self.cfg.seed
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "pushforward", labels.tolist()))
        out = []
        for i in range(0, z.shape[0], self.cfg.batch_size):
            zi = img2img_latents(
                self.model,
                z[i : i + self.cfg.batch_size],
                labels[i : i + self.cfg.batch_size],
                strength=self.cfg.strength,
                guidance=self.cfg.guidance,
                steps=self.cfg.steps,
                generator=gen,
            )
            if self._decoder is None:  # decoded like the plain DDOQ set (float64, thread-count independent)
                self._decoder = float64_decoder(self.vae)
            out.append(decode(self._decoder, zi, image_size=self.image_size, channels=self.channels))
        return torch.cat(out)


def load_pushforward(
    cfg: PushforwardConfig,
    vae: AutoencoderKL | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    device: str | torch.device = "cpu",
) -> Pushforward:
    """Load ``cfg.path`` (see layout above) onto ``device`` in eval mode; the folder's own VAE wins over
    ``vae`` if present."""
    model = load_denoiser(cfg.path)
    model.unet.to(device).eval()
    if model.vae is not None:
        model.vae.to(device).eval()
    dec = model.vae if model.vae is not None else vae
    if dec is None:
        raise WeightsError(f"pushforward folder {cfg.path} has no vae/ and no VAE was passed; pass the VAE")
    return Pushforward(model, dec, cfg, image_size=image_size, channels=channels)
