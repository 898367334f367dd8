"""Small pure functions on the Lorentz (hyperboloid) model, built on geoopt's ``Lorentz(k)``.

Convention (geoopt's, docs/methods.md §3.1): ``k > 0`` and the manifold is
``H_k = {x in R^{D+1} : <x, x>_L = -k, x_0 > 0}`` with ``<u, v>_L = -u_0 v_0 + sum_{i>=1} u_i v_i``;
the sectional curvature is ``K = -1/k`` and the origin is ``o = (sqrt(k), 0, ..., 0)``.

Every function casts its inputs to float64 (a differentiable cast) and returns float64: points of the
clamped map sit at ``cosh(10) ~ 1.1e4`` and unclamped ConvNet features overflow float32 (§3.3).
Point tensors have the ambient coordinate last: ``[..., D+1]``.
"""

from __future__ import annotations

import math

import torch
from geoopt import Lorentz
from geoopt.manifolds.lorentz import math as lmath

_F64 = torch.float64

CODE_CLAMP_RADIUS = 10.0
"""The released HDD code's cap on the geodesic radius ``r`` of :func:`expmap0` (its vendored geoopt clamps
``r`` at 10): the code-faithful default of every ``clamp_radius`` (``expmap0``, ``HDDOptions``,
``PruneConfig``); ``None`` there is upstream geoopt's unclamped, theory-faithful map."""


def manifold(k: float, *, device: torch.device | str | None = None) -> Lorentz:
    """geoopt ``Lorentz`` manifold whose ``k`` is a float64 tensor on ``device``.

    ``k`` is stored in float64 on purpose: geoopt would otherwise make it a float32 tensor, which
    silently rounds non-representable curvatures such as 2.4.
    """
    if not k > 0:
        raise ValueError(f"Lorentz parameter k must be > 0, got {k}")
    return Lorentz(k=torch.full((), float(k), dtype=_F64, device=device))  # a fill: no blocking host copy


def lift(features: torch.Tensor) -> torch.Tensor:
    """Euclidean features as tangent vectors at the origin: ``f -> (0, f)``.

    Args:
        features: ``[..., D]`` any float dtype.
    Returns:
        float64 ``[..., D+1]`` with a zero time coordinate.
    """
    f = features.to(_F64)
    zero = torch.zeros(*f.shape[:-1], 1, dtype=_F64, device=f.device)
    return torch.cat((zero, f), dim=-1)


def lorentz_inner(u: torch.Tensor, v: torch.Tensor, *, keepdim: bool = False) -> torch.Tensor:
    """Minkowski inner product ``<u, v>_L`` over the last dim.

    Args:
        u, v: ``[..., D+1]`` (broadcastable).
    Returns:
        float64 ``[...]`` (``[..., 1]`` with ``keepdim``).
    """
    return lmath.inner(u.to(_F64), v.to(_F64), keepdim=keepdim, dim=-1)


def expmap0(v: torch.Tensor, *, k: float, clamp_radius: float | None = CODE_CLAMP_RADIUS) -> torch.Tensor:
    """Exponential map at the origin followed by ``projx``.

    For ``v = (0, f)`` the result is ``x = (sqrt(k) cosh r, sqrt(k) sinh r * f/|f|)`` with
    ``r = |f|/sqrt(k)`` (upstream geoopt, ``clamp_radius=None``) or ``r = min(|f|/sqrt(k), clamp_radius)``
    (code-faithful to the HDD release, whose vendored geoopt caps ``r`` at :data:`CODE_CLAMP_RADIUS` = 10).
    The point's geodesic distance from the origin is ``sqrt(k) * r``. ``projx`` then recomputes
    ``x_0 = sqrt(k + |x_{1:}|^2)``.

    The clamp is applied by shrinking ``v`` to norm ``clamp_radius * sqrt(k)`` before geoopt's
    ``expmap0``; this is the same function as clamping ``r`` (and so has the same gradient).

    Args:
        v: ``[..., D+1]`` tangent vectors at the origin (time coordinate 0, e.g. from :func:`lift`).
        k: manifold parameter (> 0).
        clamp_radius: cap on ``r``; ``None`` disables it.
    Returns:
        float64 ``[..., D+1]`` points on ``H_k``.
    """
    v = v.to(_F64)
    if clamp_radius is not None:
        if not clamp_radius > 0:
            raise ValueError(f"clamp_radius must be > 0 or None, got {clamp_radius}")
        # Same tangent norm geoopt uses (sqrt of the clamped Minkowski square).
        norm = torch.sqrt(torch.clamp_min(lorentz_inner(v, v, keepdim=True), 1e-8))
        v = v * (torch.clamp_max(norm, clamp_radius * math.sqrt(k)) / norm)
    return manifold(k, device=v.device).expmap0(v, project=True)


def projx(x: torch.Tensor, *, k: float) -> torch.Tensor:
    """geoopt's projection: keep ``x_{1:}``, set ``x_0 = sqrt(k + |x_{1:}|^2)``. float64 ``[..., D+1]``."""
    x = x.to(_F64)
    return manifold(k, device=x.device).projx(x)


def rescale_to_hyperboloid(a: torch.Tensor, *, k: float, eps: float = 1e-8) -> torch.Tensor:
    """Rescale a time-like ambient vector onto ``H_k``: ``sqrt(k) * a / sqrt(max(|<a,a>_L|, eps))``.

    Args:
        a: ``[..., D+1]`` ambient vectors (e.g. a weighted mean of points).
    Returns:
        float64 ``[..., D+1]``.
    """
    a = a.to(_F64)
    q = torch.clamp_min(lorentz_inner(a, a, keepdim=True).abs(), eps)
    return math.sqrt(k) * a / torch.sqrt(q)


def centroid(
    x: torch.Tensor, *, k: float, weights: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """Lorentzian centroid (Law et al. 2019), as in the HDD release.

    ``a = sum_i w_i x_i / sum_i w_i`` (uniform ``w`` by default: the plain ambient mean), then
    ``c = sqrt(k) * a / sqrt(max(|<a,a>_L|, eps))``. The result is invariant to the scale of ``w``.
    No ``projx`` is applied (as in the reference); ``<c,c>_L = -k`` holds up to rounding.

    Args:
        x: ``[..., N, D+1]`` points on ``H_k``.
        k: manifold parameter.
        weights: optional non-negative ``[..., N]`` (broadcast against ``x``'s leading dims), e.g. a
            ``[K, N]`` class-membership matrix with ``x`` of shape ``[N, D+1]`` gives ``[K, D+1]``.
        eps: floor on ``|<a,a>_L|``.
    Returns:
        float64 ``[..., D+1]``.
    """
    x = x.to(_F64)
    if weights is None:
        a = x.mean(dim=-2)
    else:
        w = weights.to(_F64)
        w = w / w.sum(dim=-1, keepdim=True)
        a = (w.unsqueeze(-2) @ x).squeeze(-2)
    return rescale_to_hyperboloid(a, k=k, eps=eps)


def dist(x: torch.Tensor, y: torch.Tensor, *, k: float) -> torch.Tensor:
    """Geodesic distance ``sqrt(k) * arcosh(-<x,y>_L / k)`` (geoopt ``Lorentz.dist``).

    geoopt's arcosh is ``log(z + sqrt(max(z^2 - 1, 1e-15)))``, so ``dist(x, x)`` is about
    ``sqrt(k) * 3e-8`` rather than 0, and the gradient stays finite there.

    Args:
        x, y: ``[..., D+1]`` (broadcastable) points on ``H_k``.
    Returns:
        float64 ``[...]``.
    """
    x, y = x.to(_F64), y.to(_F64)
    return manifold(k, device=x.device).dist(x, y)


def dist0(x: torch.Tensor, *, k: float) -> torch.Tensor:
    """Geodesic distance from the origin, ``sqrt(k) * arcosh(x_0 / sqrt(k))``. float64 ``[...]``."""
    x = x.to(_F64)
    return manifold(k, device=x.device).dist0(x)


def check_on_manifold(
    x: torch.Tensor, *, k: float, atol: float = 1e-6, rtol: float = 1e-12
) -> tuple[bool, str]:
    """Whether every point satisfies ``<x,x>_L = -k`` and ``x_0 > 0``.

    The tolerance is ``atol + rtol * x_0^2`` per point: the Minkowski square is a difference of two
    terms of size ``x_0^2``, so its rounding error grows with ``x_0^2``.

    Args:
        x: ``[..., D+1]`` candidate points.
    Returns:
        ``(ok, reason)``; ``reason`` names the worst violation (empty when ``ok``).
    """
    x = x.detach().to(_F64)
    if x.numel() == 0:
        return True, ""
    if not bool(torch.isfinite(x).all()):
        return False, "points contain NaN or Inf"
    x0 = x[..., 0]
    if bool((x0 <= 0).any()):
        return False, f"time coordinate x_0 must be > 0 (min x_0 = {float(x0.min()):.3g})"
    err = (lorentz_inner(x, x) + k).abs()
    tol = atol + rtol * x0.square()
    excess = err - tol
    if bool((excess > 0).any()):
        i = int(torch.argmax(excess.flatten()))
        return False, (
            f"|<x,x>_L + k| = {float(err.flatten()[i]):.3g} exceeds tolerance "
            f"{float(tol.flatten()[i]):.3g} (k={k})"
        )
    return True, ""


def klein_closed_form(fr: torch.Tensor, fs: torch.Tensor, *, k: float, clamp_radius: float) -> torch.Tensor:
    """Test oracle for docs/methods.md §3.3: the HDD distance when the clamp is active for every sample.

    With every ``|f_i| > clamp_radius * sqrt(k)``, each point sits at ``r = clamp_radius`` and
    ``d(c(real), c(syn)) = sqrt(k) * arcosh((1 - <m_r, m_s>) / sqrt((1 - |m_r|^2)(1 - |m_s|^2)))``
    with ``m = tanh(clamp_radius) * mean_i(f_i / |f_i|)`` (the Klein-model distance of the means).
    Multiply by ``lambda`` to get the HDD loss.

    Args:
        fr: ``[N_r, D]`` real features; fs: ``[N_s, D]`` synthetic features (any float dtype).
        k: manifold parameter; clamp_radius: the cap on ``r`` (must be active for every sample).
    Returns:
        float64 scalar.
    Raises:
        ValueError: if some feature norm does not exceed ``clamp_radius * sqrt(k)``.
    """
    fr, fs = fr.to(_F64), fs.to(_F64)
    cap = clamp_radius * math.sqrt(k)
    nr, ns = fr.norm(dim=-1), fs.norm(dim=-1)
    if bool((nr <= cap).any()) or bool((ns <= cap).any()):
        raise ValueError(f"klein_closed_form needs every feature norm > clamp_radius*sqrt(k) = {cap:.4g}")
    t = math.tanh(clamp_radius)
    mr = t * (fr / nr.unsqueeze(-1)).mean(dim=0)
    ms = t * (fs / ns.unsqueeze(-1)).mean(dim=0)
    z = (1.0 - mr @ ms) / torch.sqrt((1.0 - mr @ mr) * (1.0 - ms @ ms))
    return math.sqrt(k) * torch.acosh(torch.clamp_min(z, 1.0))
