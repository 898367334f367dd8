"""Stage ``distill``: a synthetic set from the real data, for any method.

The config's type selects the method: :class:`~ddcore.distill.config.DistillConfig` (DM, HDD, NCFM),
:class:`~ddcore.distill.config.BaselineConfig` (random, herding) or
:class:`~ddcore.latent.ddoq.DDOQConfig` (DDOQ, D4M; needs the ``latents`` and ``vae`` inputs). An
optional ``features`` input restricts matching to the hyperbolic core set. The loop checkpoints into
``ctx.checkpoint_dir`` and resumes from it after a crash.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data.grid import make_grid, png_bytes
from ddcore.data.synthetic_io import save_synthetic
from ddcore.distill.baselines import select_baseline
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.distill.loop import distill
from ddcore.synthetic import SyntheticSet
from tasks.features import load_keep
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def synthetic_grid(sset: SyntheticSet, classes: list[str], per_class: int = 10) -> bytes:
    """PNG bytes of a grid with up to ``per_class`` images of each class."""
    pix = (sset.pixels().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = [pix[(sset.labels == c).numpy()][:per_class] for c in range(sset.num_classes)]
    rows = [r if len(r) else np.zeros((0, *pix.shape[1:]), np.uint8) for r in rows]
    return png_bytes(make_grid(rows, labels=classes))


def publish_synthetic(sset: SyntheticSet, out: str, art_name: str, classes: list[str], source: dict,
                      ctx: StageContext) -> None:
    """Save ``sset`` at ``out`` and attach its image grid to the stage's MLflow run."""
    save_synthetic(sset, out, classes=classes, source={"name": art_name, **source}, overwrite=True)
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / f"{sset.method}-ipc{sset.ipc}.png"
        grid.write_bytes(synthetic_grid(sset, classes))
        ctx.log_artifact(grid, "grids")


def distill_stage(inputs: dict[str, ArtifactRef], config: DistillConfig | BaselineConfig, out: str,
                  ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    art = open_artifact(inputs["dataset"].uri)
    keep = load_keep(inputs["features"].uri) if "features" in inputs else None
    sampler = ArtifactSampler(art, "train", keep=keep)
    if isinstance(config, DistillConfig):
        sset = distill(sampler, config, device=ctx.device, checkpoint_dir=ctx.local_checkpoint_dir,
                       log=lambda it, m: ctx.log_metrics(it, m))
    elif isinstance(config, BaselineConfig):
        sset = select_baseline(sampler, config, device=ctx.device)
    else:
        from tasks.latents import ddoq_from_inputs

        return ddoq_from_inputs(inputs, config, out, ctx, t0)
    sset.extra.update(dataset_digest=art.digest, core_set=inputs["features"].sha256 if keep is not None else None)
    part = f"-classes{config.classes[0]}-{config.classes[-1]}" if getattr(config, "classes", None) else ""
    publish_synthetic(sset, out, f"{art.meta.name}-{sset.method}-ipc{config.ipc}{part}", art.meta.classes,
                      {"kind": "distill", "dataset": inputs["dataset"].uri, "dataset_digest": art.digest}, ctx)
    seconds = time.perf_counter() - t0
    hist = sset.extra.get("loss_history") or [[0, 0.0]]
    return {"seconds": seconds, "n_images": int(sset.images.shape[0]), "final_loss": float(hist[-1][1])}


DISTILL = make_stage_task("distill", distill_stage, "synthetic", retries=1, tags=("gpu",))
