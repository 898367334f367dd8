"""Stage ``prune``: hyperbolic pruning of a synthetic set (e.g. distil at IPC 50, keep 20% -> IPC 10).

The kept keys are recorded in the pruned set's ``dataset.json`` (``extra.kept_keys``).
"""

from __future__ import annotations

import time

from ddcore.data import open_artifact
from ddcore.data.synthetic_io import load_synthetic
from ddcore.prune.core import PruneConfig, prune_synthetic
from tasks.distill import publish_synthetic
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def prune_stage(inputs: dict[str, ArtifactRef], config: PruneConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    src = inputs["synthetic"]
    art = open_artifact(src.uri)
    sset = load_synthetic(src.uri)
    pruned = prune_synthetic(sset, config, device=ctx.device)
    pruned.extra.update(pruned_from_digest=src.sha256)
    publish_synthetic(pruned, out, f"{art.meta.name}-pruned", art.meta.classes,
                      {"kind": "prune", "synthetic": src.uri, "synthetic_digest": src.sha256}, ctx)
    return {"seconds": time.perf_counter() - t0, "n_images": int(pruned.images.shape[0]),
            "from_images": int(sset.images.shape[0])}


PRUNE = make_stage_task("prune", prune_stage, "synthetic", retries=1, tags=("gpu",))
