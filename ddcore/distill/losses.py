"""Matching losses on feature tensors: DM (§2), HDD (§3) and NCFM's NCFD (§4) of docs/methods.md.

Every loss takes embeddings of real and synthetic samples of one class and returns a scalar; real
features are always detached, so gradients reach only the synthetic side. Each has a batched form
that sums the per-class losses over all classes in one call, in one of two layouts:

- stacked: ``real_feat [K, B_r, D]``, ``syn_feat [K, B_s, D]`` (equal batch sizes per class);
- indexed: ``real_feat [N_r, D]`` with ``real_labels [N_r]`` and ``syn_feat [N_s, D]`` with
  ``syn_labels [N_s]`` (int64 class indices). Classes absent from both sides are skipped; a class
  present on one side only is an error. With ``all_present=True`` the caller guarantees that every class
  in ``[0, num_classes)`` has samples on both sides (the distillation steps build such chunk-local labels):
  the check and the class mask are skipped, so the loss makes no host round trip on a GPU (the check reads
  counts back; boolean masking needs the mask's size on the host).

Hyper-parameters (curvature, scales, alpha/beta) are keyword-only with no defaults: they come from the
stage config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddcore.geometry.lorentz import centroid, dist, expmap0, lift, rescale_to_hyperboloid

# ---------------------------------------------------------------------------------------------------
# per-class statistics in the two batched layouts


def _check_feats(real_feat: torch.Tensor, syn_feat: torch.Tensor, ndim: int) -> None:
    if real_feat.ndim != ndim or syn_feat.ndim != ndim:
        raise ValueError(
            f"expected {ndim}-d real and syn features, got shapes {tuple(real_feat.shape)} and "
            f"{tuple(syn_feat.shape)}"
        )
    if real_feat.shape[-1] != syn_feat.shape[-1]:
        raise ValueError(f"feature dims differ: real {real_feat.shape[-1]} vs syn {syn_feat.shape[-1]}")
    if ndim == 3 and real_feat.shape[0] != syn_feat.shape[0]:
        raise ValueError(f"class counts differ: real {real_feat.shape[0]} vs syn {syn_feat.shape[0]}")


def _segment_mean(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean of ``x [N, ...]`` -> ``[K, ...]`` (zeros for empty classes). Counts by ``index_add`` (a CUDA
    ``bincount`` reads the largest label back to the host)."""
    counts = x.new_zeros(num_classes).index_add(0, labels, x.new_ones(labels.shape[0]))
    sums = x.new_zeros((num_classes, *x.shape[1:])).index_add(0, labels, x)
    return sums / counts.clamp_min(1).view(-1, *([1] * (x.ndim - 1)))


def _present_classes(
    real_labels: torch.Tensor, syn_labels: torch.Tensor, num_classes: int | None, all_present: bool = False
) -> tuple[int, torch.Tensor | None]:
    """``(K, present [K] bool)``; raises if a class has samples on one side only. ``all_present``: the caller's
    guarantee (module doc); returns ``(num_classes, None)`` without reading anything back."""
    if real_labels.ndim != 1 or syn_labels.ndim != 1:
        raise ValueError("real_labels and syn_labels must be 1-d int64 class indices")
    if all_present:
        if num_classes is None:
            raise ValueError("all_present needs num_classes")
        return num_classes, None
    if num_classes is None:
        num_classes = int(torch.cat((real_labels, syn_labels)).max().item()) + 1
    cr = torch.bincount(real_labels, minlength=num_classes)
    cs = torch.bincount(syn_labels, minlength=num_classes)
    if cr.numel() != num_classes or cs.numel() != num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    pr, ps = cr > 0, cs > 0
    if not bool(torch.equal(pr, ps)):
        bad = torch.nonzero(pr != ps).flatten().tolist()
        raise ValueError(f"classes {bad[:5]} have real samples or synthetic samples but not both")
    return num_classes, pr


def _kept(stat: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """The rows of the present classes (all rows when ``present`` is ``None``)."""
    return stat if present is None else stat[present]


def _indexed(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    real_labels: torch.Tensor | None,
    syn_labels: torch.Tensor | None,
) -> bool:
    """Which layout the batched call uses; validates shapes."""
    if (real_labels is None) != (syn_labels is None):
        raise ValueError("pass both real_labels and syn_labels, or neither (stacked [K, B, D] layout)")
    indexed = real_labels is not None
    _check_feats(real_feat, syn_feat, 2 if indexed else 3)
    if indexed and (real_labels.shape[0] != real_feat.shape[0] or syn_labels.shape[0] != syn_feat.shape[0]):
        raise ValueError("labels must have one entry per feature row")
    return indexed


# ---------------------------------------------------------------------------------------------------
# DM: first-moment matching


def dm_loss(real_feat: torch.Tensor, syn_feat: torch.Tensor) -> torch.Tensor:
    """DM loss of one class: ``|mean_i r_i - mean_j s_j|^2`` (sum of squares over ``D``).

    Args:
        real_feat: ``[B_r, D]`` real embeddings (detached here).
        syn_feat: ``[B_s, D]`` synthetic embeddings.
    Returns:
        scalar of ``syn_feat``'s dtype.
    """
    _check_feats(real_feat, syn_feat, 2)
    diff = real_feat.detach().mean(dim=0) - syn_feat.mean(dim=0)
    return diff.square().sum()


def dm_loss_batched(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    *,
    real_labels: torch.Tensor | None = None,
    syn_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    all_present: bool = False,
) -> torch.Tensor:
    """Sum over classes of :func:`dm_loss` (stacked ``[K, B, D]`` or indexed layout, see module doc).

    Returns:
        scalar of ``syn_feat``'s dtype.
    """
    if _indexed(real_feat, syn_feat, real_labels, syn_labels):
        num_classes, present = _present_classes(real_labels, syn_labels, num_classes, all_present)
        mr = _segment_mean(real_feat.detach(), real_labels, num_classes)
        ms = _segment_mean(syn_feat, syn_labels, num_classes)
        return _kept((mr - ms).square().sum(dim=-1), present).sum()
    return (real_feat.detach().mean(dim=1) - syn_feat.mean(dim=1)).square().sum()


# ---------------------------------------------------------------------------------------------------
# HDD: Lorentz-centroid distance


def hdd_loss(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    *,
    k: float,
    scale: float,
    clamp_radius: float | None,
) -> torch.Tensor:
    """HDD loss of one class: ``scale * d_k(c(exp0(real)), c(exp0(syn)))``.

    Features are cast to float64, lifted to ``(0, f)``, mapped by the (optionally clamped) ``expmap0``,
    averaged with the Lorentzian centroid and compared by geodesic distance (docs/methods.md §3.1, §3.4).

    Args:
        real_feat: ``[B_r, D]`` real embeddings (detached here).
        syn_feat: ``[B_s, D]`` synthetic embeddings.
        k: manifold parameter (curvature ``-1/k``); scale: ``lambda``; clamp_radius: cap on the
            ``expmap0`` radius (10 in the HDD release) or ``None``.
    Returns:
        scalar cast back to ``syn_feat``'s dtype (computed in float64).
    """
    _check_feats(real_feat, syn_feat, 2)
    xr = expmap0(lift(real_feat.detach()), k=k, clamp_radius=clamp_radius)
    xs = expmap0(lift(syn_feat), k=k, clamp_radius=clamp_radius)
    d = dist(centroid(xr, k=k), centroid(xs, k=k), k=k)
    return (scale * d).to(syn_feat.dtype)


def hdd_loss_batched(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    *,
    k: float,
    scale: float,
    clamp_radius: float | None,
    real_labels: torch.Tensor | None = None,
    syn_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    all_present: bool = False,
) -> torch.Tensor:
    """Sum over classes of :func:`hdd_loss` (stacked ``[K, B, D]`` or indexed layout, see module doc).

    Memory note: the real points are float64 ``[K, B_r, D+1]``.

    Returns:
        scalar cast back to ``syn_feat``'s dtype.
    """
    indexed = _indexed(real_feat, syn_feat, real_labels, syn_labels)
    xr = expmap0(lift(real_feat.detach()), k=k, clamp_radius=clamp_radius)
    xs = expmap0(lift(syn_feat), k=k, clamp_radius=clamp_radius)
    if indexed:
        num_classes, present = _present_classes(real_labels, syn_labels, num_classes, all_present)
        cr = rescale_to_hyperboloid(_kept(_segment_mean(xr, real_labels, num_classes), present), k=k)
        cs = rescale_to_hyperboloid(_kept(_segment_mean(xs, syn_labels, num_classes), present), k=k)
    else:
        cr, cs = centroid(xr, k=k), centroid(xs, k=k)
    return (scale * dist(cr, cs, k=k).sum()).to(syn_feat.dtype)


# ---------------------------------------------------------------------------------------------------
# NCFM: neural characteristic function discrepancy


def _char_fn(feat: torch.Tensor, t: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(cos, sin)`` of ``<t, f/|f|>`` (``<t, f>`` without ``normalize``): ``[..., B, F]`` each."""
    f = F.normalize(feat, p=2, dim=-1) if normalize else feat
    proj = f @ t.transpose(-1, -2)
    return torch.cos(proj), torch.sin(proj)


def _ncfd_from_cf(
    re_r: torch.Tensor,
    im_r: torch.Tensor,
    re_s: torch.Tensor,
    im_s: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    eps: float,
) -> torch.Tensor:
    """NCFD from characteristic-function values ``[..., F]`` -> ``[...]`` (mean over frequencies).

    With ``P = Phi_r conj(Phi_s)``: ``|P| = |Phi_r||Phi_s|``, ``Re P = |P| cos(da)``, ``Im P = |P| sin(da)``,
    so the phase term needs no atan2. ``|P| (1 - cos da)`` is evaluated as ``(Im P)^2 / (|P| + Re P)``
    when ``Re P > 0`` (half-angle identity) to avoid the cancellation of ``|P| - Re P`` for small phase
    gaps, which in float32 leaves a noise floor of ~1e-9 under the square root.
    """
    tiny = eps * eps  # floor on |Phi|^2: keeps sqrt's gradient finite at Phi = 0
    amp_r = torch.sqrt(torch.clamp_min(re_r.square() + im_r.square(), tiny))
    amp_s = torch.sqrt(torch.clamp_min(re_s.square() + im_s.square(), tiny))
    amp = (amp_r - amp_s).square()
    p_abs = amp_r * amp_s
    p_re = re_r * re_s + im_r * im_s
    p_im = im_r * re_s - re_r * im_s
    acute = p_re > 0
    den = torch.where(acute, p_abs + p_re, torch.ones_like(p_re))  # never 0 on the branch used
    phase = 2.0 * torch.where(acute, p_im.square() / den, p_abs - p_re)
    phase = torch.clamp_min(phase, eps)
    return torch.sqrt(torch.clamp_min(alpha * amp + beta * phase, eps)).mean(dim=-1)


def ncfd(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    eps: float = 1e-12,
    normalize: bool = True,
) -> torch.Tensor:
    """Neural characteristic function discrepancy of one class (docs/methods.md §4.1).

    Features are L2-normalised (``normalize=False``, an ablation, uses them raw);
    ``Phi(t) = mean_i exp(j <t, f_i>)`` (cos/sin means). Per frequency:
    ``amp = (|Phi_r| - |Phi_s|)^2``, ``phase = 2 |Phi_r| |Phi_s| (1 - cos(a_r - a_s))`` clamped ``>= eps``;
    the result is ``mean_t sqrt(alpha * amp + beta * phase)`` (argument also floored at ``eps``).
    With ``alpha = beta = 0.5`` this equals ``mean_t |Phi_r(t) - Phi_s(t)| / sqrt(2)``.

    Args:
        real_feat: ``[B_r, D]`` real embeddings (detached here).
        syn_feat: ``[B_s, D]`` synthetic embeddings.
        t: ``[F, D]`` frequencies (``N(0, I)`` draws or the sampling net's output).
        alpha, beta: amplitude and phase weights; eps: numerical floor.
    Returns:
        scalar in the features' dtype.
    """
    _check_feats(real_feat, syn_feat, 2)
    if t.ndim != 2 or t.shape[-1] != real_feat.shape[-1]:
        raise ValueError(f"t must be [F, D={real_feat.shape[-1]}], got {tuple(t.shape)}")
    re_r, im_r = _char_fn(real_feat.detach(), t, normalize)
    re_s, im_s = _char_fn(syn_feat, t, normalize)
    return _ncfd_from_cf(
        re_r.mean(0), im_r.mean(0), re_s.mean(0), im_s.mean(0), alpha=alpha, beta=beta, eps=eps
    )


def ncfm_loss(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    scale: float,
    eps: float = 1e-12,
    normalize: bool = True,
) -> torch.Tensor:
    """NCFM matching loss of one class: ``scale * ncfd(...)`` (``scale`` is 300 in the reference)."""
    return scale * ncfd(real_feat, syn_feat, t, alpha=alpha, beta=beta, eps=eps, normalize=normalize)


def ncfd_batched(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    eps: float = 1e-12,
    real_labels: torch.Tensor | None = None,
    syn_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    normalize: bool = True,
    all_present: bool = False,
) -> torch.Tensor:
    """Sum over classes of :func:`ncfd` (stacked ``[K, B, D]`` or indexed layout, see module doc).

    Args:
        t: ``[F, D]`` shared by all classes, or (stacked layout only) ``[K, F, D]`` one set per class.
    Memory note: the stacked layout materialises ``[K, B_r, F]`` cos/sin tensors.

    Returns:
        scalar in the features' dtype.
    """
    indexed = _indexed(real_feat, syn_feat, real_labels, syn_labels)
    if t.ndim not in (2, 3) or (indexed and t.ndim != 2) or t.shape[-1] != real_feat.shape[-1]:
        raise ValueError(f"t must be [F, D] (or [K, F, D] for stacked features), got {tuple(t.shape)}")
    re_r, im_r = _char_fn(real_feat.detach(), t, normalize)
    re_s, im_s = _char_fn(syn_feat, t, normalize)
    if indexed:
        num_classes, present = _present_classes(real_labels, syn_labels, num_classes, all_present)
        stats = [
            _kept(_segment_mean(v, lab, num_classes), present)
            for v, lab in ((re_r, real_labels), (im_r, real_labels), (re_s, syn_labels), (im_s, syn_labels))
        ]
    else:
        stats = [v.mean(dim=-2) for v in (re_r, im_r, re_s, im_s)]
    return _ncfd_from_cf(*stats, alpha=alpha, beta=beta, eps=eps).sum()


def ncfm_loss_batched(
    real_feat: torch.Tensor,
    syn_feat: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    scale: float,
    eps: float = 1e-12,
    real_labels: torch.Tensor | None = None,
    syn_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    normalize: bool = True,
    all_present: bool = False,
) -> torch.Tensor:
    """``scale *`` :func:`ncfd_batched`."""
    return scale * ncfd_batched(
        real_feat,
        syn_feat,
        t,
        alpha=alpha,
        beta=beta,
        eps=eps,
        real_labels=real_labels,
        syn_labels=syn_labels,
        num_classes=num_classes,
        normalize=normalize,
        all_present=all_present,
    )
