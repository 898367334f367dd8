"""Shared pieces of ingest sources: the sample record and the source protocol."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ddcore.errors import DataError


@dataclass
class Sample:
    """One real sample on its way into an artifact.

    Attributes:
        split: split name.
        key: flat unique key.
        image: uint8 ``[H, W, C]``.
        label: class index.
        meta: JSON-serialisable provenance (e.g. the source file).
        weight: optional per-sample loss weight (sources that carry one: ``.pt``, Hugging Face folders).
        soft: optional float32 ``[num_classes]`` soft label (same sources).
        encoded: ``(field, bytes)``: the image's original encoding, stored as is (a JPEG file kept byte for byte).
    """

    split: str
    key: str
    image: np.ndarray
    label: int
    meta: dict[str, Any] = field(default_factory=dict)
    weight: float | None = None
    soft: np.ndarray | None = None
    encoded: tuple[str, bytes] | None = None


class Source(Protocol):
    """What an ingest source provides."""

    name: str
    classes: list[str]
    image_shape: tuple[int, int, int]

    def describe(self) -> dict[str, Any]:
        """Provenance recorded in ``dataset.json`` (kind, uri, options)."""
        ...

    def samples(self) -> Iterator[Sample]:
        """Samples in a deterministic order."""
        ...

    def expected_total(self) -> int | None:
        """Number of samples if known up front (for progress bars)."""
        ...


def require_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{what} folder not found: {p}; check the path")
    return p


def stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (True = test) holding out ``round(fraction * n_c)`` samples of each class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(fraction * len(idx)))
        if n_test:
            mask[rng.permutation(idx)[:n_test]] = True
    return mask
