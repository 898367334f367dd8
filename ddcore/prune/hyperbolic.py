"""Hyperbolic pruning of the real matching target (HDD, docs/methods.md §3.5).

The HDD paper claims that keeping 20 % of the core set in hyperbolic space retains performance, but
**no pruning code was released**. The ranking rule here is our reading of the paper's root-centric
argument: embed each class's real images (the caller runs a seeded ConvNet), map them to the
hyperboloid exactly as the HDD loss does (lift, clamped ``expmap0``), score every sample by its
geodesic distance to the class's Lorentz centroid (``reference="centroid"``) or to the origin
(``reference="origin"``), and keep ``round(fraction * n)`` per class: the closest, the farthest, or a
``stratified`` pick that spans the class's range of distances (one sample from each of equal-count
distance bins).

Caveat (§3.3): with the code-faithful clamp (``clamp_radius=10``) and random-ConvNet features, whose
norms exceed ``10 * sqrt(k)``, every point sits at the same radius, so ``reference="origin"`` scores
are all exactly equal and the ranking falls back to the original order (stable sort). Use
``reference="centroid"`` (equivalent then to ranking by cosine similarity to the mean direction) or
``clamp_radius=None`` for a meaningful origin ranking.

The same scorer serves the prune stage and any method that prunes its real pool in-line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ddcore.geometry.lorentz import centroid, dist, expmap0, lift

Reference = Literal["centroid", "origin"]
Order = Literal["closest", "farthest", "stratified"]


@dataclass(frozen=True)
class PruneResult:
    """What a prune keeps.

    Attributes:
        kept_indices: int64 ``[M]`` indices into the input rows, ascending.
        kept_keys: the keys of those rows (``keys[i]`` for ``i`` in ``kept_indices``), or ``None``.
        scores: float64 ``[N]`` hyperbolic distance of every input row to its reference point.
    """

    kept_indices: torch.Tensor
    kept_keys: list[str] | None
    scores: torch.Tensor


def hyperbolic_scores(
    features: torch.Tensor,
    *,
    k: float,
    clamp_radius: float | None,
    reference: Reference,
) -> torch.Tensor:
    """Geodesic distances of one class's samples to its Lorentz centroid or to the origin.

    Args:
        features: ``[N, D]`` embeddings of one class (any float dtype; no gradient is kept).
        k: manifold parameter; clamp_radius: ``expmap0`` cap
            (``CODE_CLAMP_RADIUS`` = 10 code-faithful, ``None`` upstream).
        reference: ``"centroid"`` (Lorentz centroid of these samples) or ``"origin"`` (computed in
            closed form: the geodesic radius of ``expmap0((0, f))`` is ``min(|f|, clamp_radius*sqrt(k))``).
    Returns:
        float64 ``[N]``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got {tuple(features.shape)}")
    if not k > 0 or (clamp_radius is not None and not clamp_radius > 0):
        raise ValueError(f"need k > 0 and clamp_radius > 0 or None, got k={k}, clamp_radius={clamp_radius}")
    with torch.no_grad():
        if reference == "origin":
            # dist0(expmap0(lift(f))) is exactly the (clamped) tangent norm min(|f|, clamp*sqrt(k)); the
            # closed form avoids arcosh rounding, which would turn the exact ties of clamped points into
            # noise (~1e-8) and rank them by it.
            radius = features.detach().to(torch.float64).norm(dim=-1)
            return radius if clamp_radius is None else torch.clamp_max(radius, clamp_radius * math.sqrt(k))
        if reference == "centroid":
            x = expmap0(lift(features), k=k, clamp_radius=clamp_radius)
            return dist(x, centroid(x, k=k).unsqueeze(0), k=k)
    raise ValueError(f"reference must be 'centroid' or 'origin', got {reference!r}")


def keep_count(n: int, fraction: float) -> int:
    """Rows kept from a class of ``n``: ``round(fraction * n)`` (half up), at least 1 (0 if ``n == 0``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n == 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def stratified_positions(n: int, m: int) -> torch.Tensor:
    """Ranks picked by the ``stratified`` rule: the middle rank of each of ``m`` equal-count bins of ``n`` ranks,
    ``floor((i + 1/2) * n / m)`` for ``i < m`` (int64 ``[m]``, ascending; every rank when ``m == n``)."""
    if not 0 <= m <= n:
        raise ValueError(f"need 0 <= m <= n, got m={m}, n={n}")
    return torch.div((2 * torch.arange(m, dtype=torch.int64) + 1) * n, 2 * m, rounding_mode="floor") if m else \
        torch.zeros(0, dtype=torch.int64)


def select_keep(
    scores_by_class: Sequence[torch.Tensor],
    *,
    fraction: float = 0.2,
    order: Order = "closest",
) -> list[torch.Tensor]:
    """Per class, the positions of the :func:`keep_count` samples the rule ``order`` keeps.

    Args:
        scores_by_class: one ``[n_c]`` score tensor per class.
        fraction: share kept per class (the paper's 20 % by default).
        order: ``"closest"`` keeps the smallest distances, ``"farthest"`` the largest, ``"stratified"`` one
            sample per equal-count bin of the sorted distances (:func:`stratified_positions`), so the kept set
            spans the class from its most typical to its most atypical samples. Ties keep the earlier
            position (stable sort).
    Returns:
        one int64 tensor per class of positions within that class, in rank order (closest first, farthest
        first for ``"farthest"``).
    """
    if order not in ("closest", "farthest", "stratified"):
        raise ValueError(f"order must be 'closest', 'farthest' or 'stratified', got {order!r}")
    kept = []
    for scores in scores_by_class:
        n = int(scores.numel())
        ranked = torch.sort(scores.detach().flatten(), descending=order == "farthest", stable=True).indices
        m = keep_count(n, fraction)
        picked = ranked[stratified_positions(n, m).to(ranked.device)] if order == "stratified" else ranked[:m]
        kept.append(picked.to(torch.int64))
    return kept


def prune_by_class(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    fraction: float,
    k: float,
    clamp_radius: float | None,
    reference: Reference,
    order: Order = "closest",
    keys: Sequence[str] | None = None,
) -> PruneResult:
    """Score every sample within its class and keep :func:`keep_count` of each class.

    Args:
        features: ``[N, D]`` embeddings (from a seeded ConvNet, computed by the caller).
        labels: int64 ``[N]`` class of each row.
        fraction, order: see :func:`select_keep`; k, clamp_radius, reference: see
            :func:`hyperbolic_scores`.
        keys: optional ``N`` source keys, returned for the kept rows.
    Returns:
        :class:`PruneResult` with ascending global ``kept_indices``.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"need features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if keys is not None and len(keys) != features.shape[0]:
        raise ValueError(f"keys must have {features.shape[0]} entries, got {len(keys)}")
    labels = labels.to(torch.int64)
    scores = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    members = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    per_class = []
    for idx in members:
        s = hyperbolic_scores(features[idx], k=k, clamp_radius=clamp_radius, reference=reference)
        scores[idx] = s
        per_class.append(s)
    chosen = select_keep(per_class, fraction=fraction, order=order)
    kept = torch.cat([idx[pos] for idx, pos in zip(members, chosen, strict=True)]) if members else labels[:0]
    kept = torch.sort(kept).values
    kept_keys = [keys[i] for i in kept.tolist()] if keys is not None else None
    return PruneResult(kept_indices=kept, kept_keys=kept_keys, scores=scores)
