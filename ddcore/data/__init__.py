"""The data layer: canonical dataset artifacts over WebDataset shards."""

from ddcore.data.artifact import DatasetArtifact, open_artifact
from ddcore.data.ingest import IngestConfig, ingest
from ddcore.data.loader import ArtifactSampler, stream
from ddcore.data.meta import DatasetMeta
from ddcore.data.writer import ArtifactWriter

__all__ = [
    "ArtifactSampler", "ArtifactWriter", "DatasetArtifact", "DatasetMeta", "IngestConfig", "ingest",
    "open_artifact", "stream",
]
