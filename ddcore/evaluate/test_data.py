"""The test split of an evaluation: a tensor in memory when it fits the budget, else streamed batch by batch.

ImageNet's validation split at 128 px is ~10 GB as float32, and every concurrent evaluation round would hold its
own copy. :class:`StreamedSplit` stands in for the image tensor where evaluation only needs its shape and its
batches in stored order: it reads the split through the WebDataset loader (:func:`ddcore.data.loader.stream`,
worker processes decoding), so memory is bounded by the batch size and the workers, not by the split. Batches
are the ones the in-memory path forms (same order, same size) with ``workers=0``; with loader workers each
worker reads whole shards, so batches interleave (the accuracy is a count of correct samples either way).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ddcore.errors import DataError


class StreamedSplit:
    """A split of a dataset artifact read batch by batch; ``shape``/``ndim`` as the tensor it replaces.

    Args:
        artifact: an opened :class:`~ddcore.data.artifact.DatasetArtifact`.
        split: the split to read.
        workers: loader processes decoding images (capped at the split's shard count).
    """

    def __init__(self, artifact: Any, split: str, *, workers: int = 2) -> None:
        self.artifact, self.split, self.workers = artifact, split, workers
        rows = artifact.rows(split)
        self.shape = torch.Size([len(rows), *artifact.meta.image_shape])
        self.ndim = 4
        self.labels = torch.from_numpy(artifact.labels[rows].copy())

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x float32 [B, C, H, W] normalised, y int64 [B])``: in stored order with ``workers=0``; with workers,
        each takes every ``workers``-th shard and their batches interleave (a test accuracy does not depend on
        the order). Raises if the shards no longer match the manifest (a sample missing or relabelled)."""
        from ddcore.data.loader import stream

        label_of = dict(zip((self.artifact.keys[r] for r in self.artifact.rows(self.split)), self.labels.tolist(),
                            strict=True))
        seen = 0
        for x, y, keys in stream(self.artifact, self.split, batch_size=batch_size, num_workers=self.workers):
            # keys renamed at indexing (not flat names) are not in the manifest: their label is the shard's own
            if y.tolist() != [label_of.get(k, v) for k, v in zip(keys, y.tolist(), strict=True)]:
                raise DataError(f"the {self.split} split of {self.artifact.uri} streams other labels than its "
                                "manifest; verify the artifact (ddflow info --verify full) and ingest it again")
            seen += len(y)
            yield x, y
        if seen != self.shape[0]:
            raise DataError(f"the {self.split} split of {self.artifact.uri} streamed {seen} samples, its manifest "
                            f"lists {self.shape[0]}; verify the artifact and ingest it again")


TestImages = torch.Tensor | StreamedSplit


def split_batches(images: TestImages, labels: torch.Tensor,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test split in batches of ``batch_size``, in order, from a tensor or a :class:`StreamedSplit`."""
    if isinstance(images, StreamedSplit):
        yield from images.batches(batch_size)
        return
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def load_test_split(artifact: Any, split: str, *, memory_mb: float, workers: int = 2) -> tuple[TestImages,
                                                                                                torch.Tensor]:
    """``(images, labels)`` of ``split``: a float32 tensor when it takes at most ``memory_mb``, else a
    :class:`StreamedSplit` (labels are always a tensor: they come from the manifest)."""
    rows = artifact.rows(split)
    need_mb = len(rows) * int(np.prod(artifact.meta.image_shape)) * 4 / 2**20
    if need_mb <= memory_mb:
        return artifact.load_split(split)
    streamed = StreamedSplit(artifact, split, workers=workers)
    return streamed, streamed.labels
