"""The pipeline config (``ddflow run CONFIG``): one typed section per stage."""

from __future__ import annotations

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data.ingest import IngestConfig


class RunConfig(StageConfig):
    """Top-level pipeline config.

    Attributes:
        name: run name (folder under ``<root>/runs/``).
        data: the ingest stage.
    """

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    data: IngestConfig
