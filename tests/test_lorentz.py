"""Property tests for ddcore.geometry.lorentz (docs/methods.md §3.1, §3.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from geoopt import Lorentz

from ddcore.geometry.lorentz import (
    centroid,
    check_on_manifold,
    dist,
    dist0,
    expmap0,
    klein_closed_form,
    lift,
    lorentz_inner,
)

SEEDS = range(5)
KS = (0.5, 1.0, 2.4)
DTYPES = (torch.float32, torch.float64)


def features(seed: int, n: int, d: int, lo: float, hi: float, dtype=torch.float64) -> torch.Tensor:
    """``[n, d]`` random directions with norms uniform in ``[lo, hi]``."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    norms = lo + (hi - lo) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return (f / f.norm(dim=1, keepdim=True) * norms).to(dtype)


def test_lift_prepends_zero_time_coordinate():
    """lift maps [N, D] to float64 [N, D+1] tangent vectors (0, f) at the origin."""
    f = features(0, 4, 6, 0.5, 2.0, torch.float32)
    v = lift(f)
    assert v.shape == (4, 7) and v.dtype == torch.float64
    assert torch.all(v[:, 0] == 0)
    assert torch.equal(v[:, 1:], f.double())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", (10.0, None))
def test_expmap0_points_lie_on_hyperboloid(seed, k, dtype, clamp):
    """expmap0 (clamped or not) returns float64 points with <x,x>_L = -k and x_0 > 0."""
    f = features(seed, 32, 16, 0.01, 8.0 * math.sqrt(k), dtype)
    x = expmap0(lift(f), k=k, clamp_radius=clamp)
    assert x.dtype == torch.float64
    ok, reason = check_on_manifold(x, k=k, atol=1e-9)
    assert ok, reason
    assert torch.allclose(lorentz_inner(x, x), torch.full((32,), -k, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
def test_expmap0_clamp_caps_geodesic_radius(seed, k):
    """With the clamp, the distance to the origin is sqrt(k) * min(|f|/sqrt(k), clamp), i.e.
    min(|f|, clamp*sqrt(k)), and the spatial part points along f."""
    f = features(seed, 64, 8, 0.1, 30.0 * math.sqrt(k))
    x = expmap0(lift(f), k=k, clamp_radius=10.0)
    expected = torch.clamp_max(f.norm(dim=1), 10.0 * math.sqrt(k))
    assert torch.allclose(dist0(x, k=k), expected, rtol=1e-7, atol=1e-6)
    # the direction of the spatial part is the feature direction
    assert torch.allclose(x[:, 1:] / x[:, 1:].norm(dim=1, keepdim=True), f / f.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
def test_expmap0_unclamped_is_upstream_geoopt(seed, k):
    """clamp_radius=None reproduces geoopt's own Lorentz.expmap0 (with projx) in float64."""
    f = features(seed, 16, 8, 0.1, 20.0)
    ours = expmap0(lift(f), k=k, clamp_radius=None)
    theirs = Lorentz(k=torch.tensor(k, dtype=torch.float64)).expmap0(lift(f))
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("clamp", (10.0, None))
def test_centroid_lies_on_hyperboloid(seed, k, clamp):
    """The Lorentzian centroid of points on H_k is itself on H_k (and on the upper sheet)."""
    x = expmap0(lift(features(seed, 50, 12, 0.1, 12.0 * math.sqrt(k))), k=k, clamp_radius=clamp)
    c = centroid(x, k=k)
    assert c.shape == (13,)
    ok, reason = check_on_manifold(c, k=k, atol=1e-9)
    assert ok, reason


@pytest.mark.parametrize("seed", SEEDS)
def test_centroid_weights_are_scale_invariant_and_select_subsets(seed):
    """Uniform weights = no weights; scaling weights changes nothing; a [K, N] 0/1 weight matrix gives
    the centroid of each subset."""
    k = 1.3
    x = expmap0(lift(features(seed, 30, 5, 0.1, 4.0)), k=k)
    c = centroid(x, k=k)
    assert torch.allclose(centroid(x, k=k, weights=torch.full((30,), 7.0)), c, atol=1e-12)
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(30, generator=g, dtype=torch.float64)
    assert torch.allclose(centroid(x, k=k, weights=w), centroid(x, k=k, weights=3.0 * w), atol=1e-12)
    masks = torch.zeros(3, 30, dtype=torch.float64)
    for j in range(3):
        masks[j, 10 * j : 10 * (j + 1)] = 1.0
    cs = centroid(x, k=k, weights=masks)
    assert cs.shape == (3, 6)
    for j in range(3):
        assert torch.allclose(cs[j], centroid(x[10 * j : 10 * (j + 1)], k=k), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dist_is_a_metric_on_random_triples(seed, k, dtype):
    """dist is symmetric, (numerically) zero on the diagonal and satisfies the triangle inequality."""
    pts = [
        expmap0(lift(features(seed * 3 + j, 40, 10, 0.01, 6.0 * math.sqrt(k), dtype)), k=k) for j in range(3)
    ]
    x, y, z = pts
    dxy, dyx = dist(x, y, k=k), dist(y, x, k=k)
    assert dxy.dtype == torch.float64
    assert torch.allclose(dxy, dyx, rtol=1e-12, atol=0)
    # d(x, x) is not exactly 0: geoopt floors arcosh's sqrt(z^2 - 1) at sqrt(1e-15) (~3e-8 * sqrt(k)),
    # and <x,x>_L carries rounding ~eps * x_0^2, so d(x, x) ~ sqrt(2 eps) * x_0 for far points.
    assert torch.all(dist(x, x, k=k) <= 1e-7 + 1e-7 * x[:, 0])
    assert torch.all(dist(x, z, k=k) <= dxy + dist(y, z, k=k) + 1e-9)


@pytest.mark.parametrize("k", KS)
def test_dist0_is_distance_to_origin(k):
    """dist0(x) equals dist(o, x) with o = (sqrt(k), 0, ..., 0)."""
    x = expmap0(lift(features(1, 20, 7, 0.1, 5.0)), k=k)
    o = torch.zeros(8, dtype=torch.float64)
    o[0] = math.sqrt(k)
    assert torch.allclose(dist0(x, k=k), dist(o, x, k=k), rtol=1e-10, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_klein_closed_form_matches_clamped_centroid_distance(seed, k, dtype):
    """With every |f| > 10*sqrt(k), d(c(exp0(fr)), c(exp0(fs))) equals the Klein closed form (§3.3)."""
    fr = features(seed, 64, 32, 11.0 * math.sqrt(k), 30.0 * math.sqrt(k), dtype)
    fs = features(seed + 100, 5, 32, 11.0 * math.sqrt(k), 30.0 * math.sqrt(k), dtype)
    cr = centroid(expmap0(lift(fr), k=k, clamp_radius=10.0), k=k)
    cs = centroid(expmap0(lift(fs), k=k, clamp_radius=10.0), k=k)
    oracle = klein_closed_form(fr, fs, k=k, clamp_radius=10.0)
    assert abs(float(dist(cr, cs, k=k)) - float(oracle)) < 1e-10


def test_klein_closed_form_rejects_inactive_clamp():
    """The oracle refuses inputs for which the clamp is not active."""
    with pytest.raises(ValueError, match="clamp_radius"):
        klein_closed_form(
            features(0, 4, 3, 1.0, 2.0), features(1, 4, 3, 20.0, 30.0), k=1.0, clamp_radius=10.0
        )


def test_check_on_manifold_reports_violations():
    """check_on_manifold rejects off-manifold points, lower-sheet points and non-finite values."""
    x = expmap0(lift(features(0, 5, 3, 0.1, 2.0)), k=1.0)
    assert check_on_manifold(x, k=1.0) == (True, "")
    ok, reason = check_on_manifold(x, k=2.0)
    assert not ok and "<x,x>_L" in reason
    ok, reason = check_on_manifold(-x, k=1.0)
    assert not ok and "x_0" in reason
    bad = x.clone()
    bad[0, 1] = float("nan")
    assert check_on_manifold(bad, k=1.0)[0] is False


def test_expmap0_is_differentiable_through_the_clamp():
    """Gradients flow through the clamped map; a clamped point's radius does not depend on |f|."""
    f = features(2, 3, 4, 15.0, 20.0).requires_grad_(True)
    r = dist0(expmap0(lift(f), k=1.0, clamp_radius=10.0), k=1.0).sum()
    (grad,) = torch.autograd.grad(r, f)
    assert torch.isfinite(grad).all()
    assert float(grad.abs().max()) < 1e-6


def test_every_clamp_radius_default_is_the_code_constant() -> None:
    """The three ``clamp_radius`` defaults (``expmap0``, ``HDDOptions``, ``PruneConfig``) are the one named
    constant ``CODE_CLAMP_RADIUS`` (the released HDD code's clamp, 10), so they cannot drift apart."""
    import inspect

    from ddcore.distill.config import HDDOptions
    from ddcore.geometry.lorentz import CODE_CLAMP_RADIUS
    from ddcore.prune.core import PruneConfig

    assert CODE_CLAMP_RADIUS == 10.0
    assert inspect.signature(expmap0).parameters["clamp_radius"].default == CODE_CLAMP_RADIUS
    assert HDDOptions().clamp_radius == PruneConfig().clamp_radius == CODE_CLAMP_RADIUS


def _numpy_reference(f: np.ndarray, k: float, clamp: float | None) -> np.ndarray:
    """Independent float64 closed form of the clamped expmap0, without geoopt:
    ``(sqrt(k) cosh r, sqrt(k) sinh r f/|f|)``."""

    n = np.linalg.norm(f, axis=1, keepdims=True)
    r = n / np.sqrt(k) if clamp is None else np.minimum(n / np.sqrt(k), clamp)
    return np.concatenate((np.sqrt(k) * np.cosh(r), np.sqrt(k) * np.sinh(r) * f / n), axis=1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("clamp", (10.0, None))
def test_centroid_and_distance_match_an_independent_float64_closed_form(seed, k, clamp):
    """expmap0, the Lorentz centroid and the geodesic distance agree with a NumPy float64 computation from the
    formulas of docs/methods.md §3.1 (points, centroid = sqrt(k) a / sqrt(|<a,a>_L|) of the ambient mean a,
    distance = sqrt(k) arccosh(-<x,y>_L / k)), for norms on both sides of the clamp."""
    fr, fs = features(seed, 40, 16, 0.5, 14.0), features(seed + 11, 6, 16, 0.5, 14.0)
    xr, xs = (_numpy_reference(f.numpy(), k, clamp) for f in (fr, fs))
    assert np.allclose(expmap0(lift(fr), k=k, clamp_radius=clamp).numpy(), xr, rtol=1e-10, atol=1e-10)

    def inner(u, v):
        return -u[..., 0] * v[..., 0] + (u[..., 1:] * v[..., 1:]).sum(-1)

    def cent(x):
        a = x.mean(axis=0)
        return np.sqrt(k) * a / np.sqrt(abs(inner(a, a)))

    cr, cs = cent(xr), cent(xs)
    assert np.allclose(centroid(torch.from_numpy(xr), k=k).numpy(), cr, rtol=1e-10)
    expected = np.sqrt(k) * np.arccosh(-inner(cr, cs) / k)
    got = float(dist(torch.from_numpy(cr), torch.from_numpy(cs), k=k))
    assert got == pytest.approx(float(expected), rel=1e-7, abs=1e-9)
