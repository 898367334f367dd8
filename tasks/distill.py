"""Stage ``distill``: a synthetic set from the real data, for any registered method.

The config names its method (``ddcore.methods.method_of``); the method's entry point gets the train split
(restricted to the hyperbolic core set by an optional ``features`` input), the device, a checkpoint folder
it resumes from after a crash, a progress callback and, for the latent methods, the ``latents`` and ``vae``
inputs (and ``denoiser`` when the config asks for the pushforward: ``Method.needs_for``). The stage saves the
set with its lineage in the manifest and logs its image grid.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddcore.config import StageConfig
from ddcore.data import ArtifactSampler, open_artifact
from ddcore.data.grid import make_grid, png_bytes
from ddcore.data.synthetic_io import save_synthetic
from ddcore.methods import MethodInputs, method_of
from ddcore.synthetic import SyntheticSet
from tasks.features import load_keep
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task

GRID_CLASSES = 50
"""Most classes (rows) in a set's logged image grid; larger sets show that many classes spread over the range."""


def grid_classes(num_classes: int, most: int = GRID_CLASSES) -> list[int]:
    """The classes a grid shows: all of them, or ``most`` evenly spaced from the first to the last."""
    if num_classes <= most:
        return list(range(num_classes))
    return sorted({int(round(v)) for v in np.linspace(0, num_classes - 1, most)})


def synthetic_grid(sset: SyntheticSet, classes: list[str], per_class: int = 10) -> bytes:
    """PNG bytes of a grid with up to ``per_class`` images of each class (of :func:`grid_classes`)."""
    pix = (sset.pixels().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    shown = grid_classes(sset.num_classes)
    rows = [pix[(sset.labels == c).numpy()][:per_class] for c in shown]
    rows = [r if len(r) else np.zeros((0, *pix.shape[1:]), np.uint8) for r in rows]
    return png_bytes(make_grid(rows, labels=[classes[c] for c in shown]))


PER_CLASS_FIELDS = ("class_sizes", "quantization_error", "kmeans_seconds")
"""Per-class figures of a set's ``extra`` (the latent methods') logged as one table, not one metric per class."""


def per_class_table(sset: SyntheticSet, classes: list[str]) -> str | None:
    """CSV text with one row per class: its name, and each per-class figure the set records (``None``: none)."""
    cols = [f for f in PER_CLASS_FIELDS if len(sset.extra.get(f) or []) == sset.num_classes]
    if not cols:
        return None
    empty = [sum(1 for n in counts if n == 0) for counts in sset.extra.get("cell_counts") or []]
    if len(empty) == sset.num_classes:
        cols.append("empty_cells")
    lines = [",".join(["class", "name", *cols])]
    for c in range(sset.num_classes):
        vals = [empty[c] if f == "empty_cells" else sset.extra[f][c] for f in cols]
        lines.append(",".join([str(c), '"' + classes[c].replace('"', '""') + '"', *(f"{v:.6g}" for v in vals)]))
    return "\n".join(lines) + "\n"


def publish_synthetic(sset: SyntheticSet, out: str, art_name: str, classes: list[str], source: dict,
                      ctx: StageContext) -> None:
    """Save ``sset`` at ``out`` and attach its image grid (and per-class table, if any) to the stage's MLflow run."""
    save_synthetic(sset, out, classes=classes, source={"name": art_name, **source}, overwrite=True)
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / f"{sset.method}-ipc{sset.ipc}.png"
        grid.write_bytes(synthetic_grid(sset, classes))
        ctx.log_artifact(grid, "grids")
        if (table := per_class_table(sset, classes)) is not None:
            path = Path(d) / f"{sset.method}-ipc{sset.ipc}-per-class.csv"
            path.write_text(table)
            ctx.log_artifact(path, "tables")


def distill_stage(inputs: dict[str, ArtifactRef], config: StageConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    method = method_of(config)
    art = open_artifact(inputs["dataset"].uri)
    keep = load_keep(inputs["features"].uri) if "features" in inputs else None
    needs = sorted(method.needs_for(config))
    given = {need: inputs[need].uri for need in needs}
    iterations = getattr(config, "iterations", None)  # DM/HDD/NCFM log iterations, DDOQ/D4M finished classes
    total, unit = (iterations, "iterations") if iterations else (art.meta.num_classes, "classes")
    resumed = {"resumed_from": 0}  # the iteration a checkpoint (of an earlier attempt, any node) let this one start at

    def log(it: int, m: dict) -> None:
        if "resumed_from" in m:
            resumed["resumed_from"] = int(m["resumed_from"])
        ctx.log_metrics(it, m)
        ctx.progress(it, total, unit, **m)

    budget = {"cache_mb": config.real_cache_mb} if hasattr(config, "real_cache_mb") else {}
    sampler = ArtifactSampler(art, "train", keep=keep, **budget)
    sset = method.run(MethodInputs(sampler, art, ctx.device, ctx.checkpoint_dir,
                                   log, **given), config)
    sset.extra.update(dataset_digest=art.digest, core_set=inputs["features"].sha256 if keep is not None else None)
    part = f"-classes{config.classes[0]}-{config.classes[-1]}" if getattr(config, "classes", None) else ""
    source = {"kind": "distill", "dataset": inputs["dataset"].uri, "dataset_digest": art.digest,
              **{f"{need}_digest": inputs[need].sha256 for need in needs}}
    publish_synthetic(sset, out, f"{art.meta.name}-{sset.method}-ipc{config.ipc}{part}", art.meta.classes,  # type: ignore[attr-defined]
                      source, ctx)
    hist = sset.extra.get("loss_history") or [[0, 0.0]]
    return {"seconds": time.perf_counter() - t0, "n_images": int(sset.images.shape[0]),
            "final_loss": float(hist[-1][1]), **resumed, **(method.metrics(sset) if method.metrics else {})}


DISTILL = make_stage_task("distill", distill_stage, "synthetic", retries=1, tags=("gpu",))
