"""DDOQ (Tan & Slade, arXiv 2501.07681) and its D4M baseline (Su et al., CVPR 2024) on VAE latents.

Per class ``c``: quantize the class's latent stream into ``K = ipc`` centres with streaming
mini-batch k-means or CLVQ (:mod:`ddcore.latent.kmeans`), make one exact assignment pass to get the
Voronoi cell counts, then decode the centres to images. DDOQ weights each image by its cell mass
(the optimal quantizer, lower W2 to the latent measure); D4M (``variant='d4m'``) uses uniform weights.

Image weights in the returned :class:`SyntheticSet`: per class the weights ``w_k`` sum to 1; with
``weight_scale='mean_one'`` (default) they are multiplied by ``K`` so the mean image weight is 1 and a
weighted loss ``mean_i w_i * loss_i`` has the same scale as the unweighted one (D4M gets all ones);
``'sum_one'`` keeps per-class sums of 1. The raw (unscaled) masses and counts are kept in ``extra``.

``weights='sqrt_mass'`` (``w_k ~ sqrt(count_k)``, renormalised) is an UNVERIFIED reading of the paper's
"variance reduction" heuristic (its exact formula is not public); ``'mass'`` is the plain cell mass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from pydantic import Field, model_serializer

from ddcore.config import StageConfig
from ddcore.errors import DataError, DistillationError
from ddcore.latent.kmeans import cell_counts, cell_masses, minibatch_kmeans
from ddcore.latent.pushforward import PushforwardOptions
from ddcore.latent.vae import decode, float64_decoder
from ddcore.seeding import derive_seed
from ddcore.synthetic import SyntheticSet

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

LatentBatches = Callable[[], Iterable[torch.Tensor]]


class DDOQConfig(StageConfig):
    """Per-class quantization settings. ``batch_size=None`` is D4M's ``km_expand * ipc`` with
    ``km_expand = 1``; ``iters=None`` is one pass over the class stream (D4M's partial_fit loop).

    ``pushforward``: decode the centroids through img2img with the run's denoiser (stage ``train_denoiser``)
    instead of plain VAE decoding (D4M as published: centroids -> img2img -> decode); ``None`` (default) is
    plain decoding. Its ``seed`` defaults to this config's. An unset ``pushforward`` is left out of the dump,
    so configs (and digests) without it are those of earlier versions.
    """

    ipc: int = Field(10, ge=1)
    iters: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    init: Literal["kmeans++", "random"] = "kmeans++"
    init_size: int | None = Field(None, ge=1)
    update: Literal["minibatch", "clvq"] = "minibatch"
    clvq_gamma0: float = Field(0.5, gt=0.0, le=1.0)
    clvq_tau: float = Field(1000.0, gt=0.0)
    weights: Literal["mass", "sqrt_mass"] = "mass"
    weight_scale: Literal["mean_one", "sum_one"] = "mean_one"
    variant: Literal["ddoq", "d4m"] = "ddoq"
    assign_chunk: int = Field(4096, ge=1)
    decode_batch: int = Field(64, ge=1)
    seed: int = 0
    pushforward: PushforwardOptions | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_pushforward(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("pushforward", 0) is None:
            del data["pushforward"]
        return data

    @property
    def pushforward_seed(self) -> int:
        """The seed of the pushforward's noise: ``pushforward.seed``, else :attr:`seed`."""
        pf = self.pushforward
        return self.seed if pf is None or pf.seed is None else pf.seed


class ClassQuantizer(NamedTuple):
    """``centroids [K, *latent_shape]``, ``weights`` float64 ``[K]`` (sum 1), ``counts`` int64 ``[K]``."""

    centroids: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor


def class_weights(counts: torch.Tensor, cfg: DDOQConfig) -> torch.Tensor:
    """Per-class image weights (float64, sum 1) from exact cell counts, per ``cfg.variant/weights``."""
    k = counts.numel()
    if cfg.variant == "d4m":
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    masses = cell_masses(counts)
    if cfg.weights == "sqrt_mass":  # unverified reading of the paper's heuristic
        root = masses.sqrt()
        return root / root.sum()
    return masses


def _quantize(
    latent_batches_fn: LatentBatches,
    cfg: DDOQConfig,
    generator: torch.Generator,
) -> tuple[ClassQuantizer, float, int]:
    shape: list[tuple[int, ...]] = []

    def stream() -> Iterable[torch.Tensor]:
        for b in latent_batches_fn():
            if not shape:
                shape.append(tuple(b.shape[1:]))
            yield b

    res = minibatch_kmeans(
        stream,
        cfg.ipc,
        iters=cfg.iters,
        batch_size=cfg.batch_size or cfg.ipc,
        generator=generator,
        init=cfg.init,
        update=cfg.update,
        init_size=cfg.init_size,
        clvq_gamma0=cfg.clvq_gamma0,
        clvq_tau=cfg.clvq_tau,
    )
    counts, sse, n = cell_counts(latent_batches_fn, res.centroids, chunk=cfg.assign_chunk)
    if n == 0:
        raise DataError("the class latent stream was empty on the assignment pass; make it re-iterable")
    cent = res.centroids.reshape(cfg.ipc, *shape[0])
    return ClassQuantizer(cent, class_weights(counts, cfg), counts), sse / n, n


def quantize_class(
    latent_batches_fn: LatentBatches,
    cfg: DDOQConfig,
    generator: torch.Generator,
) -> ClassQuantizer:
    """Quantize one class: ``latent_batches_fn()`` must return a FRESH iterable of latent batches
    ``[b, *latent_shape]`` on every call (it is read for the k-means passes and once more for the exact
    cell counts). Returns ``(centroids [K, *latent_shape], weights [K] summing to 1, counts [K])``."""
    return _quantize(latent_batches_fn, cfg, generator)[0]


@dataclass(frozen=True)
class DDOQResult:
    """What :func:`distill_ddoq` makes: the set, each class's centroids ``[K, *latent_shape]`` (before
    decoding) and each class's quantization time in seconds (k-means passes + the exact assignment pass)."""

    synthetic: SyntheticSet
    centroids: list[torch.Tensor]
    quantize_seconds: list[float]


def distill_ddoq(
    latents_by_class: Callable[[int], Iterable[torch.Tensor]],
    vae: AutoencoderKL,
    cfg: DDOQConfig,
    *,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int | tuple[int, int] | None = None,
    pushforward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> DDOQResult:
    """DDOQ / D4M distillation from per-class latent streams.

    Args:
        latents_by_class: ``c -> iterable of scaled latent batches [b, c', h, w]`` (as
            :func:`ddcore.latent.vae.encode` returns); called several times per class, each call must
            start a fresh pass.
        vae: decodes the centres (ignored when ``pushforward`` is given).
        cfg: :class:`DDOQConfig`; class ``c`` uses the k-means seed ``derive_seed(cfg.seed, 'kmeans', c)``.
        num_classes, mean, std: dataset facts; images are returned in ``(pixel - mean) / std`` space
            with ``len(mean)`` channels.
        image_size: crop decoded images to this size (undo the VAE's padding).
        pushforward: optional ``(latents [K, ...], labels [K]) -> pixel images [K, C, H, W] in [0, 1]``
            replacing plain decoding (e.g. :class:`ddcore.latent.pushforward.Pushforward`); its
            ``seeds`` attribute, if any, is merged into the recorded seeds.
        log: ``log(classes_done, {"quantization_error": ..., "seconds": ...})`` after each class (progress).

    Returns:
        a :class:`DDOQResult`: the :class:`SyntheticSet` with ``ipc`` images per class, labels and per-image
        ``weights``, plus the centroids and quantization seconds of each class; the set's
        ``extra`` holds per class ``cell_masses`` (raw, sum 1), ``cell_counts``, ``quantization_error``
        (W2^2 of the class latents to the Voronoi-weighted quantizer, scaled-latent units) and
        ``class_sizes``, plus ``empty_cells`` (total zero-mass centres), ``weight_rule``, ``weight_scale``.
    """
    c_out = len(mean)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images, labels, weights = [], [], []
    seeds: dict[str, int] = {"kmeans": cfg.seed}
    extra: dict = {
        "cell_masses": [],
        "cell_counts": [],
        "quantization_error": [],
        "class_sizes": [],
        "empty_cells": 0,
        "weight_rule": "uniform" if cfg.variant == "d4m" else cfg.weights,
        "weight_scale": cfg.weight_scale,
    }
    centroids, seconds = [], []
    decoder = None
    for c in range(num_classes):
        seed_c = derive_seed(cfg.seed, "kmeans", c)
        seeds[f"kmeans_class_{c}"] = seed_c
        t0 = time.perf_counter()
        q, qerr, n = _quantize(lambda c=c: latents_by_class(c), cfg, torch.Generator().manual_seed(seed_c))
        seconds.append(time.perf_counter() - t0)
        centroids.append(q.centroids.detach().cpu())
        lab = torch.full((cfg.ipc,), c, dtype=torch.long)
        if pushforward is not None:
            pix = pushforward(q.centroids, lab)
        else:
            if decoder is None:  # float64 copy: decoded pixels then do not depend on the thread count
                decoder = float64_decoder(vae)
            pix = decode(decoder, q.centroids, image_size=image_size, channels=c_out, chunk=cfg.decode_batch)
        pix = pix.detach().float().cpu()
        if pix.shape[1] != c_out:
            raise DataError(
                f"decoded images have {pix.shape[1]} channels but mean/std have {c_out}; fix mean/std"
            )
        images.append((pix - m) / s)
        labels.append(lab)
        w = q.weights * (cfg.ipc if cfg.weight_scale == "mean_one" else 1.0)
        weights.append(w.float())
        masses = cell_masses(q.counts)
        extra["cell_masses"].append([float(v) for v in masses])
        extra["cell_counts"].append([int(v) for v in q.counts])
        extra["quantization_error"].append(qerr)
        extra["class_sizes"].append(n)
        extra["empty_cells"] += int((q.counts == 0).sum())
        if log is not None:
            log(c + 1, {"quantization_error": float(qerr), "seconds": seconds[-1]})
    seeds.update(getattr(pushforward, "seeds", {}) or {})
    out = torch.cat(images)
    if not torch.isfinite(out).all():
        raise DistillationError("decoded DDOQ images contain NaN/inf; check the VAE weights and latents")
    return DDOQResult(SyntheticSet(
        images=out.contiguous(),
        labels=torch.cat(labels),
        mean=tuple(mean),
        std=tuple(std),
        num_classes=num_classes,
        method=cfg.variant,
        config=cfg.model_dump(mode="json"),
        seeds=seeds,
        weights=torch.cat(weights),
        extra=extra,
    ), centroids, seconds)
