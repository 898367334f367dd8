"""Benchmarks: scripts that print a table and write their figures as JSON (``python -m benchmarks.<name>``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, obj: Any, *, indent: int = 2, newline: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` (its folder created): a temp sibling first, then a rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + ("\n" if newline else ""))
    tmp.replace(out)
    return out
