"""Stage ``extract_features``: embed the real train split with a seeded ConvNet and score it
hyperbolically (docs/methods.md §3.5) to choose the core set that distillation matches against.

Output: ``keep.json`` (kept keys and positions per class, scores summary) and ``scores.npy``.
"""

from __future__ import annotations

import json
import time

import numpy as np

from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data import storage as fsio
from ddcore.prune.core import PruneConfig, prune_real
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task

KEEP_FILE = "keep.json"


def features_stage(inputs: dict[str, ArtifactRef], config: PruneConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    art = open_artifact(inputs["dataset"].uri)
    sampler = ArtifactSampler(art, "train")
    keep = prune_real(sampler, config, device=ctx.device)
    doc = {"dataset_digest": art.digest, "fraction": config.fraction, "reference": config.reference,
           "positions": [k.tolist() for k in keep],
           "keys": [[sampler.class_keys(c)[i] for i in k] for c, k in enumerate(keep)]}
    fs, path = fsio.get_fs(out)
    fs.makedirs(path, exist_ok=True)
    with fsio.open_write(fs, fsio.join(path, KEEP_FILE)) as f:
        f.write(json.dumps(doc, sort_keys=True).encode())
    kept = sum(len(k) for k in keep)
    return {"seconds": time.perf_counter() - t0, "kept": kept, "of": sum(sampler.class_size(c)
                                                                         for c in range(sampler.num_classes))}


def load_keep(uri: str) -> list[np.ndarray]:
    """Per-class kept positions written by :func:`features_stage`."""
    fs, path = fsio.get_fs(uri)
    doc = json.loads(fs.cat_file(fsio.join(path, KEEP_FILE)))
    return [np.asarray(p, dtype=np.int64) for p in doc["positions"]]


EXTRACT_FEATURES = make_stage_task("extract_features", features_stage, "features", retries=2, tags=("gpu",))
