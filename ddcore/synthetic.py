"""The synthetic-set type every method and baseline returns.

A :class:`SyntheticSet` holds images in *normalised* space (``(pixel - mean) / std`` per channel),
labels, optional per-image weights and soft labels, and everything needed to reproduce it: the
method name, the resolved config mapping and every seed used. ``ddcore.data.synthetic_io`` saves it
as a dataset artifact of the canonical format, so it can be re-ingested, shown and evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SyntheticSet:
    """A distilled (or selected) set.

    Attributes:
        images: float32 ``[N, C, H, W]`` in normalised space.
        labels: int64 ``[N]`` hard labels in ``[0, num_classes)``.
        mean: per-channel mean used for normalisation (length C).
        std: per-channel std used for normalisation (length C).
        num_classes: number of classes of the source dataset.
        method: method name (``dm``, ``hdd``, ``ncfm``, ``ddoq``, ``random``, ...).
        config: resolved config mapping (JSON-serialisable).
        seeds: every seed used, by role (e.g. ``{"init": 0, "loop": 1}``).
        weights: optional float32 ``[N]`` per-image loss weights (DDOQ cell masses).
        soft_labels: optional float32 ``[N, num_classes]`` probabilities.
        keys: optional source keys per image (for selections and pruned sets).
        extra: other JSON-serialisable facts worth recording (e.g. kept keys of a prune).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    weights: torch.Tensor | None = None
    soft_labels: torch.Tensor | None = None
    keys: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [N]={n}, got {tuple(self.labels.shape)}")
        if self.weights is not None and self.weights.shape != (n,):
            raise ValueError(f"weights must be [N]={n}, got {tuple(self.weights.shape)}")
        if self.soft_labels is not None and self.soft_labels.shape != (n, self.num_classes):
            raise ValueError(f"soft_labels must be [N, K]=({n}, {self.num_classes})")
        if self.keys is not None and len(self.keys) != n:
            raise ValueError(f"keys must have {n} entries, got {len(self.keys)}")

    @property
    def ipc(self) -> int:
        """Images per class (the largest per-class count)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        return int(counts.max().item()) if counts.numel() else 0

    def pixels(self) -> torch.Tensor:
        """Images mapped back to pixel space (float32, unclamped)."""
        m = torch.tensor(self.mean, dtype=self.images.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=self.images.dtype).view(1, -1, 1, 1)
        return self.images * s + m
