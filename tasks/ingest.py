"""Stage ``ingest``: a source -> a canonical dataset artifact."""

from __future__ import annotations

import time

from ddcore.data.ingest import IngestConfig, ingest
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def ingest_stage(inputs: dict[str, ArtifactRef], config: IngestConfig, out: str, ctx: StageContext) -> dict:
    del inputs
    t0 = time.perf_counter()
    meta = ingest(config, out, overwrite=True)
    ctx.logger.info("ingested %s: %s", meta.name, {s: c["total"] for s, c in meta.counts.items()})
    return {"seconds": time.perf_counter() - t0, "num_classes": meta.num_classes,
            **{f"n_{s}": int(c["total"]) for s, c in meta.counts.items()}}


INGEST = make_stage_task("ingest", ingest_stage, "dataset", retries=2)
