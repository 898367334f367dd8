"""Where a run's artifacts live (no heavy imports: the CLI resolves it before torch or Prefect load)."""

from __future__ import annotations

import os
from pathlib import Path


def default_root(root: str | None = None) -> str:
    """``root``, else ``$DDFLOW_ROOT``, else ``./artifacts``; local paths made absolute, URLs kept."""
    value = root or os.environ.get("DDFLOW_ROOT") or "artifacts"
    return value if "://" in value else str(Path(value).expanduser().resolve())
