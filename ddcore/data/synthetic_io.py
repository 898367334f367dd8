"""Saving a :class:`~ddcore.synthetic.SyntheticSet` as a dataset artifact, and loading it back.

The synthetic set becomes an ordinary artifact (``storage = "npy"``: float32 images in normalised
space, plus a png preview per image), so it can be shown, re-ingested and evaluated like any
dataset. Method, config, seeds and extra facts go to ``dataset.json`` under ``extra``; weights go
to the manifest's ``weight`` column and soft labels to ``soft.npy`` members.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddcore.data.artifact import DatasetArtifact
from ddcore.data.meta import DatasetMeta
from ddcore.data.writer import ArtifactWriter
from ddcore.errors import DistillationError
from ddcore.synthetic import SyntheticSet


def save_synthetic(sset: SyntheticSet, out: str | Path, *, classes: list[str], source: dict[str, Any],
                   overwrite: bool = False, shard_size: int = 10000) -> DatasetMeta:
    """Write ``sset`` as an artifact at ``out`` (atomic). Refuses NaN/Inf images."""
    images = sset.images.detach().cpu().to(torch.float32)
    if not torch.isfinite(images).all():
        raise DistillationError("synthetic images contain NaN or Inf; refusing to save them")
    labels = sset.labels.cpu().numpy()
    extra = {
        "synthetic": True,
        "method": sset.method,
        "config": sset.config,
        "seeds": sset.seeds,
        "ipc": sset.ipc,
        **sset.extra,
    }
    counters = [0] * sset.num_classes
    with ArtifactWriter(out, name=f"{source.get('name', 'synthetic')}", classes=classes,
                        image_shape=tuple(images.shape[1:]), source=source, shard_size=shard_size,
                        storage="npy", mean=list(sset.mean), std=list(sset.std), overwrite=overwrite,
                        extra=extra) as w:
        for i in range(images.shape[0]):
            c = int(labels[i])
            key = f"syn_{c:05d}_{counters[c]:06d}"
            counters[c] += 1
            meta = {"source_key": sset.keys[i]} if sset.keys else {}
            w.add("train", key, images[i].numpy(), c, meta=meta,
                  weight=None if sset.weights is None else float(sset.weights[i]),
                  soft=None if sset.soft_labels is None else sset.soft_labels[i].numpy())
        return w.commit(require_all_classes=None)


def load_synthetic(uri: str | Path, *, verify: str = "quick") -> SyntheticSet:
    """Read a synthetic-set artifact back into a :class:`SyntheticSet` (bit-exact images)."""
    art = DatasetArtifact.open(uri, verify=verify)
    x, y = art.load_split("train")
    rows = art.rows("train")
    weights = None if art.weights is None else torch.from_numpy(art.weights[rows].astype(np.float32))
    extra = dict(art.meta.extra)
    method = str(extra.pop("method", "dataset"))
    config = extra.pop("config", {})
    seeds = extra.pop("seeds", {})
    for k in ("synthetic", "ipc"):
        extra.pop(k, None)
    return SyntheticSet(images=x, labels=y, mean=tuple(art.meta.mean), std=tuple(art.meta.std),
                        num_classes=art.meta.num_classes, method=method, config=config, seeds=seeds,
                        weights=weights, soft_labels=art.soft_labels("train"),
                        keys=[art.keys[r] for r in rows], extra=extra)
