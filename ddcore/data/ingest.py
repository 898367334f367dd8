"""Ingest: any source -> a canonical dataset artifact (atomic, deterministic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data.meta import DatasetMeta
from ddcore.data.sources import SourceSpec, build_source
from ddcore.data.writer import DEFAULT_SHARD_SIZE, ArtifactWriter

Progress = Callable[[int, int | None], None]


class IngestConfig(StageConfig):
    """Stage config of ingest.

    Attributes:
        source: what to read (``kind`` selects the reader).
        shard_size: samples per WebDataset shard.
        max_per_class: keep at most this many samples per class and split (first in source order);
            ``None`` keeps all.
    """

    source: SourceSpec
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1)
    max_per_class: int | None = Field(None, ge=1)


def ingest(config: IngestConfig, out: str | Path, *, overwrite: bool = False,
           progress: Progress | None = None) -> DatasetMeta:
    """Read ``config.source`` and publish a dataset artifact at ``out``.

    The same source and config always produce byte-identical shards and the same digest. On any
    error nothing is left at ``out``.
    """
    src = build_source(config.source)
    desc = dict(src.describe())
    if config.max_per_class is not None:
        desc["max_per_class"] = config.max_per_class
    seen: dict[tuple[str, int], int] = {}
    total = src.expected_total()
    with ArtifactWriter(out, name=src.name, classes=src.classes, image_shape=src.image_shape, source=desc,
                        shard_size=config.shard_size, overwrite=overwrite) as writer:
        for n, s in enumerate(src.samples(), start=1):
            if config.max_per_class is not None:
                k = (s.split, s.label)
                if seen.get(k, 0) >= config.max_per_class:
                    continue
                seen[k] = seen.get(k, 0) + 1
            writer.add(s.split, s.key, s.image, s.label, meta=s.meta)
            if progress is not None and n % 1000 == 0:
                progress(n, total)
        meta = writer.commit()
    if progress is not None:
        progress(total or 0, total)
    return meta
