"""Stage ``ingest``: a source -> a canonical dataset artifact.

A ``kind: artifact`` source is not re-encoded: the existing artifact is verified and its files are hard-linked
(or copied) into the output, so the output digest is the source artifact's digest; the metrics (in ``ref.json``)
name the source artifact's location and digest.
"""

from __future__ import annotations

import time

from ddcore.data.ingestion import IngestConfig, ingest
from ddcore.data.sources.artifact import ArtifactSpec, reuse_artifact, source_location
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def ingest_stage(inputs: dict[str, ArtifactRef], config: IngestConfig, out: str, ctx: StageContext) -> dict:
    del inputs
    t0 = time.perf_counter()
    source: dict[str, str] = {}
    if isinstance(config.source, ArtifactSpec):
        meta, how = reuse_artifact(config.source, out, overwrite=True)
        source = {"source_artifact": source_location(config.source.path), "source_digest": meta.digest,
                  "placed_by": how}
        ctx.logger.info("reused dataset artifact %s (digest %s, %s)", config.source.path, meta.digest[:16], how)
    else:
        meta = ingest(config, out, overwrite=True)
    ctx.logger.info("ingested %s: %s", meta.name, {s: c["total"] for s, c in meta.counts.items()})
    return {"seconds": time.perf_counter() - t0, "num_classes": meta.num_classes,
            **{f"n_{s}": int(c["total"]) for s, c in meta.counts.items()}, **source}


INGEST = make_stage_task("ingest", ingest_stage, "dataset", retries=2)
