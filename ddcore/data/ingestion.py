"""Ingest: any source -> a canonical dataset artifact (atomic, deterministic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ddcore.config import StageConfig
from ddcore.data import storage as fsio
from ddcore.data.meta import DatasetMeta
from ddcore.data.shard_index import index_shards
from ddcore.data.sources import SourceSpec, WebDatasetSpec, build_source
from ddcore.data.sources.artifact import ArtifactSpec, pin_digest, reuse_artifact
from ddcore.data.writer import DEFAULT_SHARD_SIZE, ArtifactWriter
from ddcore.errors import ArtifactError

Progress = Callable[[int, int | None], None]


class IngestConfig(StageConfig):
    """Stage config of ingest.

    Attributes:
        source: what to read (``kind`` selects the reader); ``kind: artifact`` reuses an existing dataset
            artifact as it is.
        shard_size: samples per WebDataset shard (``kind: artifact`` keeps the artifact's shards).
        max_per_class: keep at most this many samples per class and split (first in source order);
            ``None`` keeps all. Not with ``kind: artifact`` (that would need re-ingesting).
        workers: processes that read and encode at once (shards indexed in place, image folders); the
            artifact is the same for every count, so it is not part of the stage key.
    """

    source: SourceSpec
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1)
    max_per_class: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1, le=256, exclude=True)

    @model_validator(mode="after")
    def _artifact_is_used_as_is(self) -> IngestConfig:
        if isinstance(self.source, ArtifactSpec) and self.max_per_class is not None:
            raise ValueError("max_per_class needs re-ingesting, but source kind 'artifact' uses the artifact as it "
                             "is; remove max_per_class or make a subset with 'ddflow ingest --max-per-class'")
        if isinstance(self.source, WebDatasetSpec) and self.source.layout != "reencode" and self.max_per_class:
            raise ValueError(f"max_per_class needs re-encoding, but layout {self.source.layout!r} indexes the shards "
                             "as they are; remove max_per_class or use layout: reencode")
        return self

    def pinned(self) -> IngestConfig:
        """This config as the ingest stage runs it: an ``artifact`` source without ``sha256`` gets the digest its
        ``dataset.json`` records, so the stage key follows the artifact's content; other sources are unchanged."""
        if not isinstance(self.source, ArtifactSpec):
            return self
        return self.model_copy(update={"source": pin_digest(self.source)})


def ingest(config: IngestConfig, out: str | Path, *, overwrite: bool = False,
           progress: Progress | None = None) -> DatasetMeta:
    """Read ``config.source`` and publish a dataset artifact at ``out``.

    The same source and config always produce byte-identical shards and the same digest. On any
    error nothing is left at ``out``. A ``kind: artifact`` source is verified and its files placed at ``out``
    unchanged (:func:`~ddcore.data.sources.artifact.reuse_artifact`): same manifest, same digest.
    """
    check_out_apart(config.source.model_dump(mode="json"), out)
    if isinstance(config.source, ArtifactSpec):
        return reuse_artifact(config.source, out, overwrite=overwrite)[0]
    if isinstance(config.source, WebDatasetSpec) and config.source.layout != "reencode":
        spec = config.source
        return index_shards(spec.urls, out, layout=spec.layout, name=spec.name, classes=spec.classes,
                            source=spec.model_dump(mode="json"), overwrite=overwrite, progress=progress,
                            workers=config.workers)
    src = build_source(config.source, workers=config.workers)
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
            writer.add(s.split, s.key, s.image, s.label, meta=s.meta, weight=s.weight, soft=s.soft, encoded=s.encoded)
            if progress is not None and n % 1000 == 0:
                progress(n, total)
        meta = writer.commit()
    if progress is not None:
        progress(total or 0, total)
    return meta


def check_out_apart(source: dict[str, Any], out: str | Path) -> None:
    """Refuse an ``out`` that is, holds or lies inside a local path the source reads (publishing replaces ``out``;
    an ``out`` inside an ImageFolder would be read back as a class).

    Raises:
        ArtifactError: ``out`` would delete the data being ingested.
    """
    for value in source.values():
        if isinstance(value, str) and value and not value.startswith("pipe:"):
            path = Path(value).expanduser()
            if path.exists() and fsio.local_overlap(path, out):
                raise ArtifactError(f"--out {out} overlaps the source being ingested ({path}); choose an --out "
                                    "outside it")
