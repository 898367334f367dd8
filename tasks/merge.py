"""Stage ``merge``: the class-group parts of one fanned-out distillation -> the whole synthetic set.

With ``class_groups: N`` in the run config, each DM/HDD/NCFM distillation is submitted as N
``distill`` tasks (config ``classes`` = one group each, one device each); this stage concatenates
them in class order (:func:`~ddcore.distill.merge.merge_class_groups`) into the set a single run
would have produced, and records the groups and the parts' digests with it.
"""

from __future__ import annotations

import time

from ddcore.data import open_artifact
from ddcore.data.synthetic_io import load_synthetic
from ddcore.distill.merge import merge_class_groups
from tasks.configs import MergeConfig
from tasks.distill import publish_synthetic
from tasks.runtime.refs import ArtifactRef, numbered_inputs
from tasks.runtime.stage import StageContext, make_stage_task

PART = "part"
"""Prefix of the merge stage's inputs: ``part-000``, ``part-001``, ..."""


def merge_stage(inputs: dict[str, ArtifactRef], config: MergeConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    refs = numbered_inputs(inputs, PART, config.parts, "merge")
    sset = merge_class_groups([load_synthetic(r.uri) for r in refs])
    sset.extra["parts"] = [r.sha256 for r in refs]
    art = open_artifact(inputs["dataset"].uri, verify="none")
    publish_synthetic(sset, out, f"{art.meta.name}-{sset.method}-ipc{sset.ipc}", art.meta.classes,
                      {"kind": "merge", "dataset": inputs["dataset"].uri, "dataset_digest": art.digest}, ctx)
    hist = sset.extra.get("loss_history") or [[0, 0.0]]
    return {"seconds": time.perf_counter() - t0, "n_images": int(sset.images.shape[0]),
            "parts": config.parts, "final_loss": float(hist[-1][1])}


MERGE = make_stage_task("merge", merge_stage, "synthetic", retries=1)
