"""Readers for distillation and training.

* :class:`ArtifactSampler`: the per-class random access that distillation needs
  (:class:`ddcore.sampling.RealSampler`). Small datasets are cached decoded in memory, class by
  class on first use; large ones are read by byte offset on each draw, never decoded whole.
* :func:`stream`: a WebDataset pipeline over the shards of a split for training/evaluation, with an
  explicit decoder (no pickle), seeded shard and sample shuffling, and workers capped at the shard
  count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from ddcore.data.artifact import DatasetArtifact, normalize_uint8
from ddcore.data.codec import decode_sample
from ddcore.data.sources.shards import check_url_allowed

#: Cache a class decoded in memory when the split has at most this many pixels (~1.5 GB as float32).
CACHE_MAX_PIXELS = 400_000_000


class ArtifactSampler:
    """Per-class random access to one split of an artifact, as normalised float32 tensors.

    Args:
        artifact: an opened :class:`DatasetArtifact`.
        split: which split to draw from.
        cache: keep decoded classes in memory (``None`` = decide by size).
        keep: optional per-class positions to restrict to (e.g. a pruned core set):
            ``keep[c]`` indexes into the class's rows.
    """

    def __init__(
        self,
        artifact: DatasetArtifact,
        split: str = "train",
        *,
        cache: bool | None = None,
        keep: list[np.ndarray] | None = None,
    ) -> None:
        self.artifact = artifact
        meta = artifact.meta
        self.num_classes = meta.num_classes
        self.image_shape = tuple(meta.image_shape)  # type: ignore[assignment]
        self.mean, self.std = tuple(meta.mean), tuple(meta.std)
        self._rows = artifact.class_rows(split)
        if keep is not None:
            self._rows = [r[np.asarray(k, dtype=np.int64)] for r, k in zip(self._rows, keep, strict=True)]
        n_pix = sum(len(r) for r in self._rows) * int(np.prod(self.image_shape))
        self.cache = n_pix <= CACHE_MAX_PIXELS if cache is None else cache
        self._cached: dict[int, torch.Tensor] = {}

    def class_size(self, c: int) -> int:
        return int(len(self._rows[c]))

    def class_keys(self, c: int) -> list[str]:
        return [self.artifact.keys[r] for r in self._rows[c]]

    def _class_tensor(self, c: int) -> torch.Tensor:
        if c not in self._cached:
            self._cached[c] = self.artifact.read_tensor(self._rows[c])
        return self._cached[c]

    def get(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        if self.cache:
            return self._class_tensor(c)[idx]
        return self.artifact.read_tensor(self._rows[c][idx.cpu().numpy()])

    def sample(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        size = self.class_size(c)
        perm = torch.randperm(size, generator=generator)[: min(n, size)]
        return self.get(c, perm)


def _to_pair(meta: Any) -> Any:
    mean, std, storage = meta.mean, meta.std, meta.storage

    def convert(sample: dict[str, Any]) -> tuple[torch.Tensor, int, str]:
        if storage == "npy":
            x = torch.from_numpy(sample["npy"])
        else:
            x = normalize_uint8(sample["png"][None], mean, std)[0]
        return x, sample["cls"], sample["__key__"]

    return convert


def stream(
    artifact: DatasetArtifact,
    split: str,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 2000,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Iterate a split in batches ``(x [B, C, H, W] float32 normalised, y [B] int64, keys)``.

    With ``shuffle_seed`` set, shard order and samples (within ``shuffle_buffer``) are shuffled
    deterministically for that seed; without it, samples come in stored order.
    """
    urls = [check_url_allowed(u) for u in artifact.shard_urls(split)]
    shuffle = shuffle_seed is not None
    ds = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle else False,
        seed=shuffle_seed if shuffle else None,
        workersplitter=wds.split_by_worker,
        nodesplitter=wds.single_node_only,
        empty_check=False,
    )
    channels = artifact.meta.image_shape[0]
    ds = ds.map(lambda s: decode_sample(s, channels=channels))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
    ds = ds.map(_to_pair(artifact.meta)).batched(batch_size, collation_fn=_collate, partial=True)
    workers = min(num_workers, len(urls))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    yield from loader


def _collate(samples: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    xs, ys, keys = zip(*samples, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), list(keys)
