"""Dataset artifact metadata (``dataset.json``) and the manifest digest.

An artifact folder holds WebDataset shards per split, ``manifest.parquet`` (one row per sample) and
``dataset.json``. The artifact digest is the sha256 over a canonical text rendering of the manifest's
identity columns, so it does not depend on the parquet writer's version; ``dataset.json`` is written
last and is the artifact's completion marker.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ddcore.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.parquet"
METADATA = "dataset.json"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
"""Sample keys are flat names: letters, digits, '_' and '-' (no dots, separators or '..')."""
MAX_CLASSES = 100_000
"""Most classes inferred from the labels when no class list is given (ImageNet-21k has 21,841)."""
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
        storage: the shard field each sample's image is in: ``"png"`` (uint8 images), ``"npy"`` (float32 images
            in normalised space), or an encoded-image field (``"jpg"``, ``"webp"``...: uint8 images decoded on
            read): that of shards indexed in place, or ``"jpg"`` for an image folder whose JPEG files were kept as
            they are (its other images are ``png`` members; readers take the image field a sample has).
        shards: ``{file name: {"sha256": hex, "bytes": n, "count": n}}``; names are relative to the shard root.
        extra: free-form provenance (e.g. a synthetic set's method, config, seeds).
        shard_root: where the shards are: ``""`` for the artifact folder itself; the folder or URL of the user's
            own shards for an artifact that indexes them in place (``layout: in_place``), which holds only the
            manifest and this file.
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
    shard_root: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> list[str]:
        return list(self.counts)

    @property
    def in_place(self) -> bool:
        """Whether the shards are the user's, indexed where they are (not in the artifact folder)."""
        return bool(self.shard_root)

    def to_json(self) -> str:
        data = asdict(self)
        if not data["shard_root"]:  # artifacts holding their shards keep the dataset.json they always had
            del data["shard_root"]
        return json.dumps(data, indent=2, sort_keys=True)

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


MANIFEST_SCHEMA = pa.schema([("key", pa.string()), ("split", pa.string()), ("label", pa.int32()),
                             ("shard", pa.string()), ("sha256", pa.string()), ("offset", pa.int64()),
                             ("size", pa.int64()), ("weight", pa.float64()), ("soft_sha256", pa.string())])
"""One row per sample: where its primary payload sits (shard, byte offset, size) and its sha256."""


def manifest_table(rows: list[tuple]) -> pa.Table:
    """The manifest of ``rows``, each ``(key, split, label, shard, sha256, offset, size, weight, soft_sha256)``."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(MANIFEST_SCHEMA)
    return pa.table([pa.array(list(c), f.type) for c, f in zip(cols, MANIFEST_SCHEMA, strict=True)],
                    schema=MANIFEST_SCHEMA)


def split_counts(rows: list[tuple], num_classes: int) -> dict[str, dict[str, Any]]:
    """``{split: {"total": n, "per_class": [n_0, ...]}}`` of manifest ``rows`` (split at 1, label at 2), in the
    order splits first appear."""
    labels: dict[str, list[int]] = {}
    for r in rows:
        labels.setdefault(r[1], []).append(r[2])
    return {split: {"total": len(ls), "per_class": np.bincount(ls, minlength=num_classes).tolist()}
            for split, ls in labels.items()}


def check_all_classes(counts: dict[str, dict[str, Any]], classes: list[str], split: str | None) -> None:
    """Raise when ``split`` is present and a class has no sample in it (``None``: no check)."""
    if split is None or split not in counts:
        return
    empty = [classes[i] for i, n in enumerate(counts[split]["per_class"]) if n == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} has no {split} samples; add images for it or remove the class")


def channel_stats(sums: np.ndarray, sq_sums: np.ndarray, n_pixels: int) -> tuple[list[float], list[float]]:
    """Mean and std per channel from running sums over ``[0, 1]`` pixel values."""
    mean = sums / max(n_pixels, 1)
    var = np.maximum(sq_sums / max(n_pixels, 1) - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std < 1e-6, 1.0, std)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
