"""Dataset artifact metadata (``dataset.json``) and the manifest digest.

An artifact folder holds WebDataset shards per split, ``manifest.parquet`` (one row per sample) and
``dataset.json``. The artifact digest is the sha256 over a canonical text rendering of the manifest's
identity columns, so it does not depend on the parquet writer's version; ``dataset.json`` is written
last and is the artifact's completion marker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "manifest.parquet"
METADATA = "dataset.json"
DIGEST_COLUMNS = ("key", "split", "label", "shard", "sha256", "weight", "soft_sha256")


@dataclass
class DatasetMeta:
    """Contents of ``dataset.json``.

    Attributes:
        name: dataset name.
        classes: class names, index = label.
        image_shape: ``[C, H, W]``.
        mean, std: per-channel statistics of the train split in pixel space ``[0, 1]``.
        counts: ``{split: {"total": n, "per_class": [n_0, ...]}}``.
        source: how it was made (kind, uri, options).
        digest: sha256 over the manifest (see :func:`manifest_digest`).
        storage: ``"png"`` (uint8 images) or ``"npy"`` (float32 images in normalised space).
        shards: ``{file name: {"sha256": hex, "bytes": n, "count": n}}``.
        extra: free-form provenance (e.g. a synthetic set's method, config, seeds).
    """

    name: str
    classes: list[str]
    image_shape: list[int]
    mean: list[float]
    std: list[float]
    counts: dict[str, dict[str, Any]]
    source: dict[str, Any]
    digest: str = ""
    storage: str = "png"
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> list[str]:
        return list(self.counts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetMeta:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def manifest_digest(table: pa.Table) -> str:
    """sha256 over ``key,split,label,shard,sha256,weight,soft_sha256`` lines of the manifest, in row order.

    Weights and soft labels are part of what a set *is* (a weighted DDOQ set and the uniform D4M set
    of the same images must not share a digest); absent values render as empty fields.
    """
    h = hashlib.sha256()
    cols = [table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in DIGEST_COLUMNS]
    for row in zip(*cols, strict=True):
        h.update((",".join("" if v is None else repr(v) if isinstance(v, float) else str(v) for v in row)
                  + "\n").encode())
    return h.hexdigest()


def channel_stats(sums: np.ndarray, sq_sums: np.ndarray, n_pixels: int) -> tuple[list[float], list[float]]:
    """Mean and std per channel from running sums over ``[0, 1]`` pixel values."""
    mean = sums / max(n_pixels, 1)
    var = np.maximum(sq_sums / max(n_pixels, 1) - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std < 1e-6, 1.0, std)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
