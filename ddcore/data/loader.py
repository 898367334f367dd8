"""Readers for distillation and training.

* :class:`ArtifactSampler`: the per-class random access that distillation needs
  (:class:`ddcore.sampling.RealSampler`). Small datasets are cached decoded in memory, class by
  class on first use; large ones are read by byte offset on each draw, never decoded whole.
* :func:`stream`: a WebDataset pipeline over the shards of a split for training/evaluation, with an
  explicit decoder (no pickle), seeded shard and sample shuffling, and workers capped at the shard
  count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from ddcore.data.artifact import DatasetArtifact, channel_stats, normalize_pixels, normalize_uint8
from ddcore.data.codec import IMAGE_FIELDS, decode_sample
from ddcore.data.sources.shards import check_url_allowed

CACHE_MB = 1536.0
"""Default memory budget (MB of decoded images as stored: uint8 pixels, float32 for ``npy`` artifacts) of an
:class:`ArtifactSampler`'s class cache."""


class ArtifactSampler:
    """Per-class random access to one split of an artifact, as normalised float32 tensors.

    Decoded classes are cached in memory within a budget: classes are kept as they are first drawn from until
    the next one would exceed ``cache_mb``; later classes are read by byte offset on each draw (only the drawn
    images are decoded). Filling without eviction suits distillation, which visits every class every
    iteration: an evicting cache smaller than the split would decode every class in full each time. The cache
    holds the decoded uint8 pixels (a quarter of float32: ImageNet's train split at 128 px is 63 GB so, 252 GB
    as float32) and a draw normalises only the drawn images. Cached or not, a draw returns the same pixels.
    :meth:`on` gives the same sampler with its cache in a GPU's memory (the distillation loop uses it there).

    Args:
        artifact: an opened :class:`DatasetArtifact`.
        split: which split to draw from.
        cache: ``None`` (default): the budget decides; ``True``: cache every class; ``False``: cache none.
        keep: optional per-class positions to restrict to (e.g. a pruned core set):
            ``keep[c]`` indexes into the class's rows.
        cache_mb: the budget, in MB of decoded images (uint8 pixels; float32 latents of ``npy`` artifacts).
    """

    def __init__(
        self,
        artifact: DatasetArtifact,
        split: str = "train",
        *,
        cache: bool | None = None,
        keep: list[np.ndarray] | None = None,
        cache_mb: float = CACHE_MB,
    ) -> None:
        self.artifact = artifact
        meta = artifact.meta
        self.num_classes = meta.num_classes
        self.image_shape = tuple(meta.image_shape)  # type: ignore[assignment]
        self.mean, self.std = tuple(meta.mean), tuple(meta.std)
        self._rows = artifact.class_rows(split)
        if keep is not None:
            self._rows = [r[np.asarray(k, dtype=np.int64)] for r, k in zip(self._rows, keep, strict=True)]
        self._budget = float("inf") if cache is True else 0.0 if cache is False else cache_mb * 2**20
        self._npy = meta.storage == "npy"
        self._image_bytes = (4 if self._npy else 1) * int(np.prod(self.image_shape))
        self.cache = sum(len(r) for r in self._rows) * self._image_bytes <= self._budget  # the whole split fits
        self._cached: dict[int, torch.Tensor] = {}  # class -> its read_arrays() as a tensor (uint8 [n, H, W, C])
        self.cached_bytes = 0
        self.device: torch.device | None = None  # where the cache lives and draws land (None: the host)
        self._stats = channel_stats(self.mean, self.std)

    def on(self, device: torch.device) -> ArtifactSampler:
        """This sampler with its class cache in ``device``'s memory (within the same ``cache_mb`` budget, filled
        from empty on first use): cached draws are gathered and normalised there, uncached ones read on the host
        and copied. The pixels are the same as the host sampler's."""
        moved = copy.copy(self)
        moved.device, moved._cached, moved.cached_bytes = torch.device(device), {}, 0
        moved._stats = channel_stats(self.mean, self.std, device)
        return moved

    def class_size(self, c: int) -> int:
        return int(len(self._rows[c]))

    def class_keys(self, c: int) -> list[str]:
        return [self.artifact.keys[r] for r in self._rows[c]]

    def _cached_class(self, c: int) -> np.ndarray | None:
        """Class ``c`` decoded as stored, from the cache or read into it while the budget allows; else ``None``."""
        if c in self._cached:
            return self._cached[c]
        need = len(self._rows[c]) * self._image_bytes
        if self.cached_bytes + need > self._budget:
            return None
        arrays = torch.from_numpy(np.require(self.artifact.read_arrays(self._rows[c]), requirements="W"))
        self._cached[c] = arrays if self.device is None else arrays.to(self.device)
        self.cached_bytes += need
        return self._cached[c]

    def get(self, c: int, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` of class ``c``: float32 ``[len(idx), C, H, W]``, normalised (on :attr:`device` if set)."""
        whole = self._cached_class(c)
        if whole is None:
            out = self.artifact.read_tensor(self._rows[c][idx.cpu().numpy()])
            return out if self.device is None else out.to(self.device, non_blocking=True)
        # on a device: the index copied without a wait, gathered and normalised there
        sel = whole.index_select(0, idx.to(whole.device, non_blocking=True))
        return sel if self._npy else normalize_pixels(sel, *self._stats)

    def sample(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        size = self.class_size(c)
        perm = torch.randperm(size, generator=generator)[: min(n, size)]
        return self.get(c, perm)


def _to_pair(meta: Any) -> Any:
    mean, std, storage = meta.mean, meta.std, meta.storage

    def convert(sample: dict[str, Any]) -> tuple[torch.Tensor, int, str]:
        if storage == "npy":
            x = torch.from_numpy(sample["npy"])
        else:  # png, or the encoded field of kept JPEGs / shards indexed in place
            image = sample[storage] if storage in sample else next(sample[f] for f in IMAGE_FIELDS if f in sample)
            x = normalize_uint8(image[None], mean, std)[0]
        return x, sample["cls"], sample["__key__"]

    return convert


def _decoder(meta: Any) -> Any:
    """The sample decoder of a split's stream: every member of ddflow's own shards (an unknown member is refused);
    of shards indexed in place only the image and the label (their other members were checked when indexed)."""
    channels = meta.image_shape[0]
    if not meta.in_place:
        return lambda s: decode_sample(s, channels=channels)
    image = meta.storage

    def decode(s: dict[str, Any]) -> dict[str, Any]:
        label = s.get("cls", s.get("label"))
        return decode_sample({"__key__": s["__key__"], image: s[image], "cls": label}, channels=channels)

    return decode


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
    ds = ds.map(_decoder(artifact.meta))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
    ds = ds.map(_to_pair(artifact.meta)).batched(batch_size, collation_fn=_collate, partial=True)
    workers = min(num_workers, len(urls))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    yield from loader


def _collate(samples: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    xs, ys, keys = zip(*samples, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), list(keys)
