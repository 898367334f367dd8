"""The data layer: canonical dataset artifacts over WebDataset shards.

The names below are imported on first use (PEP 562), so a worker process that only needs the codec or the tar
scanner (:mod:`ddcore.data.workers`) does not import torch and webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArtifactSampler": "ddcore.data.loader", "ArtifactWriter": "ddcore.data.writer",
    "DatasetArtifact": "ddcore.data.artifact", "DatasetMeta": "ddcore.data.meta",
    "IngestConfig": "ddcore.data.ingestion", "ingest": "ddcore.data.ingestion",
    "open_artifact": "ddcore.data.artifact", "stream": "ddcore.data.loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddcore.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
