"""Hyperbolic pruning applied to data: a real core set before distillation, a synthetic set after.

Both uses call the one scorer in :mod:`ddcore.prune.hyperbolic` on embeddings from a seeded ConvNet
(``PruneConfig.network``); the ranking rule (distance to the class's Lorentz centroid, or to the origin; keep
a stratified spread, the closest or the farthest) is our reading of the HDD paper, which released no pruning code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ddcore.config import StageConfig
from ddcore.distill.features import embed_batched
from ddcore.geometry.lorentz import CODE_CLAMP_RADIUS
from ddcore.nets.spec import NamesNetwork
from ddcore.prune.hyperbolic import prune_by_class
from ddcore.sampling import RealSampler
from ddcore.synthetic import SyntheticSet


class PruneConfig(StageConfig, NamesNetwork):
    """Hyperbolic pruning: keep ``fraction`` of each class ranked by Lorentz distance.

    ``reference = origin`` needs ``clamp_radius: null``: with the clamp every feature whose norm
    exceeds the radius lands at the same distance from the origin, and the ranking falls back to
    dataset order, so that combination is refused. ``centroid`` is the default. The ``clamp_radius`` default is
    the HDD code's :data:`~ddcore.geometry.lorentz.CODE_CLAMP_RADIUS`, as for distillation (``HDDOptions``).

    Attributes:
        fraction: share of each class kept.
        reference: rank by geodesic distance to the class's Lorentz ``centroid`` or to the ``origin``.
        order: ``stratified`` (one per equal-count distance bin, spanning the class's range; the default, chosen
            by the validation study in docs/results.md), the ``closest`` (smallest distances) or the ``farthest``.
        k: curvature parameter of the Lorentz model (K = -1/k).
        clamp_radius: ``expmap0`` radius clamp (10: the HDD code's); ``None``: unclamped.
        network, width, depth: the seeded random ConvNet whose features are ranked.
        seed: seed of that network.
    """

    fraction: float = Field(0.2, gt=0, le=1)
    reference: Literal["centroid", "origin"] = "centroid"
    order: Literal["closest", "farthest", "stratified"] = "stratified"
    k: float = Field(1.0, gt=0)
    clamp_radius: float | None = Field(CODE_CLAMP_RADIUS, gt=0)
    network: str = "convnet"
    width: int = 128
    depth: int | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _origin_needs_no_clamp(self) -> PruneConfig:
        if self.reference == "origin" and self.clamp_radius is not None:
            raise ValueError("reference 'origin' with clamp_radius set ranks clamped features that all lie at "
                             "the same radius (dataset order decides); set clamp_radius: null or "
                             "reference: centroid")
        return self


def _net(cfg: PruneConfig, shape: tuple[int, int, int], num_classes: int, device: torch.device) -> torch.nn.Module:
    c, h, _ = shape
    return cfg.network_spec.build(channels=c, num_classes=num_classes, image_size=h, seed=cfg.seed).to(device).eval()


def prune_real(sampler: RealSampler, cfg: PruneConfig, *, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Positions to keep in each class of ``sampler`` (``keep[c]`` int64, ascending)."""
    dev = torch.device(device)
    net = _net(cfg, sampler.image_shape, sampler.num_classes, dev)
    keep = []
    for c in range(sampler.num_classes):
        n = sampler.class_size(c)
        feats = embed_batched(net, lambda idx, c=c: sampler.get(c, idx), n, device=dev)  # type: ignore[misc]
        res = prune_by_class(feats, torch.zeros(n, dtype=torch.int64), fraction=cfg.fraction, k=cfg.k,
                             clamp_radius=cfg.clamp_radius, reference=cfg.reference, order=cfg.order)
        keep.append(res.kept_indices.cpu().numpy())
    return keep


def prune_synthetic(sset: SyntheticSet, cfg: PruneConfig, *, device: str | torch.device = "cpu") -> SyntheticSet:
    """Keep ``fraction`` of each class of a synthetic set (e.g. IPC 50 -> IPC 10 at 0.2)."""
    dev = torch.device(device)
    net = _net(cfg, tuple(sset.images.shape[1:]), sset.num_classes, dev)  # type: ignore[arg-type]
    feats = embed_batched(net, lambda idx: sset.images[idx], sset.images.shape[0], device=dev)
    keys = sset.keys or [f"{i}" for i in range(sset.images.shape[0])]
    res = prune_by_class(feats, sset.labels, fraction=cfg.fraction, k=cfg.k, clamp_radius=cfg.clamp_radius,
                         reference=cfg.reference, order=cfg.order, keys=keys)
    idx = res.kept_indices.cpu()
    extra = dict(sset.extra)
    extra.update(pruned_from=sset.method, prune=cfg.model_dump(mode="json"), kept_keys=list(res.kept_keys or []),
                 kept_indices=idx.tolist())
    return SyntheticSet(images=sset.images[idx], labels=sset.labels[idx], mean=sset.mean, std=sset.std,
                        num_classes=sset.num_classes, method=f"{sset.method}+prune", config=sset.config,
                        seeds={**sset.seeds, "prune": cfg.seed},
                        weights=None if sset.weights is None else sset.weights[idx],
                        soft_labels=None if sset.soft_labels is None else sset.soft_labels[idx],
                        keys=[keys[i] for i in idx.tolist()], extra=extra)
