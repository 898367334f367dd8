"""Pruning of the real data used as a matching target."""

from ddcore.prune.hyperbolic import (
    PruneResult,
    hyperbolic_scores,
    keep_count,
    prune_by_class,
    select_keep,
)

__all__ = ["PruneResult", "hyperbolic_scores", "keep_count", "prune_by_class", "select_keep"]
