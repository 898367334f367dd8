"""Running a pipeline config. (Stages beyond ingest are wired by the orchestration layer.)"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from rich.console import Console

import ddcore
from ddcore.data.artifact import DatasetArtifact
from ddcore.data.ingest import ingest
from ddcore.errors import ArtifactError
from flows.config import RunConfig


def default_root(root: str | None) -> str:
    """``--root``, else ``$DDFLOW_ROOT``, else ``./artifacts`` (made absolute)."""
    value = root or os.environ.get("DDFLOW_ROOT") or "artifacts"
    return value if "://" in value else str(Path(value).expanduser().resolve())


def stage_key(stage: str, config_digest: str, upstream: list[str]) -> str:
    """Content address of a stage output: hash of stage name, config, upstream digests, version."""
    h = hashlib.sha256("|".join([stage, config_digest, *upstream, ddcore.__version__]).encode())
    return h.hexdigest()[:20]


def run_pipeline(cfg: RunConfig, *, root: str | None, console: Console) -> dict[str, str]:
    """Ingest the configured source under ``<root>/ingest/<key>/`` unless a verified copy exists."""
    base = default_root(root)
    out = f"{base}/ingest/{stage_key('ingest', cfg.data.digest(), [])}"
    t0 = time.perf_counter()
    try:
        art = DatasetArtifact.open(out)
        console.print(f"ingest: cached ({out})")
    except ArtifactError:
        ingest(cfg.data, out, overwrite=True)
        art = DatasetArtifact.open(out)
        console.print(f"ingest: done in {time.perf_counter() - t0:.1f}s ({out})")
    counts = ", ".join(f"{s}={art.meta.counts[s]['total']}" for s in art.meta.splits)
    console.print(f"dataset {art.meta.name}: {counts}, {art.meta.num_classes} classes, digest {art.digest}")
    return {"uri": out, "sha256": art.digest}
