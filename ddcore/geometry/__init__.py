"""Geometry helpers (hyperbolic / Lorentz model) used by HDD and hyperbolic pruning."""

from ddcore.geometry.lorentz import (
    centroid,
    check_on_manifold,
    dist,
    dist0,
    expmap0,
    klein_closed_form,
    lift,
    lorentz_inner,
    manifold,
    projx,
    rescale_to_hyperboloid,
)

__all__ = [
    "centroid",
    "check_on_manifold",
    "dist",
    "dist0",
    "expmap0",
    "klein_closed_form",
    "lift",
    "lorentz_inner",
    "manifold",
    "projx",
    "rescale_to_hyperboloid",
]
