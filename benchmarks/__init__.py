"""Benchmarks: scripts that print a table and write their figures as JSON (``python -m benchmarks.<name>``)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def write_json(path: str | Path, obj: Any, *, indent: int = 2, newline: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` (its folder created): a temp sibling first, then a rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + ("\n" if newline else ""))
    tmp.replace(out)
    return out


@dataclass(frozen=True)
class Timed:
    """A finished subprocess: its wall seconds, exit code and the 1-minute load average before and after it."""

    wall_s: float
    returncode: int
    load_start: float
    load_end: float


def run_timed(cmd: list[str], log: Path, env: dict[str, str], timeout: float | None = None) -> Timed:
    """Run ``cmd`` in the repository with stdout and stderr to ``log``, timing it on the wall clock."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return Timed(time.perf_counter() - t0, proc.returncode, round(load0, 2), round(os.getloadavg()[0], 2))
