"""Each stage records the peak resident memory of its run in its ref.json (and logs it with its MLflow metrics): a
stage that holds a large buffer reports it, and the next stage run alone in the process its own, smaller peak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ddcore.config import StageConfig
from tasks.runtime.memory import peak_rss_mb
from tasks.runtime.refs import RefRecord
from tasks.runtime.stage import StageContext, run_stage
from tasks.runtime.store import ArtifactStore

CAN_RESET = Path("/proc/self/clear_refs").exists()


class Alloc(StageConfig):
    mb: int = 0


def allocate(inputs: dict, config: Alloc, out: str, ctx: StageContext) -> dict[str, Any]:
    buf = np.ones(config.mb * 2**20 // 8) if config.mb else None  # touched pages count as resident
    Path(out, "n.txt").write_text(str(0 if buf is None else buf.size))
    return {"mb": config.mb}


@pytest.mark.skipif(not CAN_RESET, reason="needs Linux /proc/self/clear_refs to reset the high-water mark")
def test_peak_rss_is_recorded_per_stage(tmp_path: Path) -> None:
    """A 300 MB stage records a peak at least 300 MB above the process's base; a following 0 MB stage records a
    peak below the first one (the mark was reset when it started)."""
    store = ArtifactStore(tmp_path)
    base = peak_rss_mb()
    big = run_stage(store, "alloc", allocate, {}, Alloc(mb=300), "features", device="cpu")
    small = run_stage(store, "alloc", allocate, {}, Alloc(mb=0), "features", device="cpu")
    rb, rs = (RefRecord.from_json((Path(r.uri) / "ref.json").read_text()) for r in (big, small))
    assert rb.peak_rss_mb >= 300 and rs.peak_rss_mb < rb.peak_rss_mb - 250
    assert rb.metrics == {"mb": 300}  # the stage's own metrics stay what it returned
    assert rb.peak_rss_mb >= base
