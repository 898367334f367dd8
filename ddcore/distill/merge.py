"""Class-group fan-out: split one distillation into groups of classes and merge the parts back.

DM and HDD losses are sums of per-class terms, every class draws from its own random stream
(:class:`~ddcore.seeding.IterationRng`) and the per-iteration network comes from the
shared stream, so the images of class ``c`` do not depend on which other classes are distilled with
it: distilling groups separately (e.g. one GPU each) and merging gives the set of a single run, up
to float reduction order. The same holds for NCFM without the sampling net ψ and without CE
calibration; with either, a group run is a variant (ψ and the calibration see only the group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddcore.distill.config import DistillConfig
from ddcore.errors import DataError
from ddcore.synthetic import SyntheticSet


def class_groups(num_classes: int, groups: int) -> list[tuple[int, ...]]:
    """``num_classes`` split into ``min(groups, num_classes)`` contiguous groups of near-equal size."""
    if groups < 1:
        raise DataError(f"class_groups must be >= 1, got {groups}")
    g = min(groups, num_classes)
    bounds = [round(i * num_classes / g) for i in range(g + 1)]
    return [tuple(range(bounds[i], bounds[i + 1])) for i in range(g)]


def group_configs(cfg: DistillConfig, num_classes: int, groups: int) -> list[DistillConfig]:
    """One config per class group; each equals ``cfg`` except for ``classes``."""
    return [cfg.model_copy(update={"classes": grp}) for grp in class_groups(num_classes, groups)]


def is_exact_split(cfg: DistillConfig) -> bool:
    """Whether merging class-group runs of ``cfg`` reproduces the single run (see module doc)."""
    if cfg.method != "ncfm":
        return True
    o = cfg.ncfm
    return not o.sampling_net and (o.pool.num_models == 0 or o.calibration_weight == 0)


def merge_class_groups(parts: Sequence[SyntheticSet]) -> SyntheticSet:
    """Concatenate class-group sets (in class order) into the set of the whole run.

    Args:
        parts: sets of one method and normalisation whose configs differ only in ``classes``, whose
            classes are disjoint and together cover every class.

    Returns:
        A :class:`SyntheticSet` with images ``[sum N_i, C, H, W]`` sorted by class (stable), the
        config of the whole run (``classes: None``), summed loss history and the groups in ``extra``.

    Raises:
        DataError: the parts overlap, miss a class, or come from different runs.
    """
    if not parts:
        raise DataError("no class-group parts to merge")
    first = parts[0]
    base = {k: v for k, v in first.config.items() if k != "classes"}
    seen: list[int] = []
    for p in parts:
        if p.method != first.method or (p.mean, p.std, p.num_classes) != (first.mean, first.std, first.num_classes):
            raise DataError("class-group parts come from different methods or datasets; merge parts of one run")
        if {k: v for k, v in p.config.items() if k != "classes"} != base:
            raise DataError("class-group parts have different configs; merge parts of one run")
        seen += sorted({int(c) for c in p.labels.tolist()})
    if sorted(seen) != list(range(first.num_classes)):
        raise DataError(f"class-group parts must cover classes 0..{first.num_classes - 1} once each, "
                        f"got {sorted(seen)}")
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    order = torch.argsort(labels, stable=True)
    weights = None if first.weights is None else torch.cat([p.weights for p in parts])[order]  # type: ignore[misc]
    soft = None if first.soft_labels is None else torch.cat([p.soft_labels for p in parts])[order]  # type: ignore[misc]
    extra = {k: v for k, v in first.extra.items() if k != "loss_history"}
    extra["loss_history"] = _sum_histories([p.extra.get("loss_history") or [] for p in parts])
    extra["class_groups"] = [sorted({int(c) for c in p.labels.tolist()}) for p in parts]
    return SyntheticSet(images=images[order].contiguous(), labels=labels[order], mean=first.mean, std=first.std,
                        num_classes=first.num_classes, method=first.method, config={**base, "classes": None},
                        seeds=dict(first.seeds), weights=weights, soft_labels=soft, extra=extra)


def _sum_histories(histories: list[list]) -> list[list]:
    """Per logged iteration, the sum of the parts' losses (the whole run's loss is that sum)."""
    if not histories or any(len(h) != len(histories[0]) for h in histories):
        return []
    return [[row[0], float(sum(h[i][1] for h in histories))] for i, row in enumerate(histories[0])]
