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
from ddcore.errors import DataError
from tasks.configs import MergeConfig
from tasks.distill import publish_synthetic
from tasks.refs import ArtifactRef
from tasks.stage import StageContext, make_stage_task


def part_name(i: int) -> str:
    return f"part-{i:03d}"


def merge_stage(inputs: dict[str, ArtifactRef], config: MergeConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    names = [part_name(i) for i in range(config.parts)]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise DataError(f"merge needs inputs {names[0]}..{names[-1]}; missing {missing[0]}")
    parts = [load_synthetic(inputs[n].uri) for n in names]
    sset = merge_class_groups(parts)
    sset.extra["parts"] = [inputs[n].sha256 for n in names]
    art = open_artifact(inputs["dataset"].uri, verify="none")
    publish_synthetic(sset, out, f"{art.meta.name}-{sset.method}-ipc{sset.ipc}", art.meta.classes,
                      {"kind": "merge", "dataset": inputs["dataset"].uri, "dataset_digest": art.digest}, ctx)
    hist = sset.extra.get("loss_history") or [[0, 0.0]]
    return {"seconds": time.perf_counter() - t0, "n_images": int(sset.images.shape[0]),
            "parts": config.parts, "final_loss": float(hist[-1][1])}


MERGE = make_stage_task("merge", merge_stage, "synthetic", retries=1)
