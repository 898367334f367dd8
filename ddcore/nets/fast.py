"""Faster embedding for the distillation loops (same values as ``net.embed`` up to float rounding).

Changes that do not alter the maths:

* tensors in ``channels_last`` layout (the oneDNN/cuDNN convolutions prefer it);
* without autograd (the real batch), every ConvNet block ``conv -> instance norm -> ReLU -> avg-pool``
  runs as a fused in-place sequence instead of ``nn.GroupNorm(C, C)``, whose channels-last CPU
  kernel is slow:

  - per-sample, per-channel statistics of the conv output ``h``. For the first block (few input
    channels) they come exactly from the input: with ``U`` the 3x3 patches of the input, the mean of
    channel ``c`` is ``w_c·E[u] + bias_c`` and its variance ``w_cᵀ Cov(u) w_c``, a ``[B, K, K]``
    Gram matrix (``K = C_in·9``) instead of two passes over ``h``. Deeper blocks use ``E[h]`` and
    ``E[h²]`` reductions (``var = E[h²] - E[h]²`` in float64; if ``E[h]² > 100·var`` anywhere, the
    layer recomputes the variance from centred values, so cancellation never costs accuracy);
  - with ``s = γ/σ > 0`` (always, after ``reinit_``: ``γ = 1``), ``avgpool(relu(s·(h - μ) + β))``
    equals ``s·(avgpool(max(h, t)) - t)`` with ``t = μ - β/s``: one in-place ``max`` over the large
    tensor, the pool, and the affine map on the 4x smaller pooled tensor. Channels with ``γ <= 0``,
    or thresholds so far out that rounding would show, take the plain in-place
    ``relu(s·h + (β - s·μ))`` path.

On a GPU the path makes no read-back: the two branch tests above (``E[h]² > 100·var``, and ``γ > 0`` with
the threshold in range) would each read device values back to the host, stalling the launch queue three
times per block, so there the variance comes from one Welford ``var_mean`` pass (stable without the test)
and the block takes the plain ``relu(s·h + (β - s·μ))`` path (``addcmul`` then ``relu_``, no test needed),
then a 2x2 mean over a view of the NHWC storage (:func:`pool_2x2_nhwc`) in place of ``avg_pool2d``'s slower
channels-last kernel.

Networks other than ConvNet fall back to ``net.embed``; batch norm and no-norm ConvNets keep their
modules (only channels_last and in-place ReLU apply).

Opt-in, off by default and CHANGING NUMERICS: ``fast_embed(..., real_dtype=torch.bfloat16)`` runs the
no-autograd path's convolutions in bfloat16 (statistics, thresholds and pooling stay float32);
features then differ from float32 by ~1e-2 relative. Nothing in ddflow turns it on by itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.nets.convnet import ConvNet

GRAM_MAX_K = 64
"""Largest ``C_in·kh·kw`` for which the first block's statistics come from the input's patch Gram."""

CANCEL_RATIO = 100.0
"""``E[h]² / var`` above which the variance is recomputed from centred values."""

MAX_SHIFT = 100.0
"""Largest ``|s·μ - β|`` for which the pool-before-affine form is used (rounding ~ 6e-8 x this)."""


def prepare(net: nn.Module) -> nn.Module:
    """Move ``net`` to channels_last in place (a no-op for non-4D parameters); returns it."""
    return net.to(memory_format=torch.channels_last)


def fast_embed(net: nn.Module, x: torch.Tensor, *, real_dtype: torch.dtype = torch.float32,
               sync_free: bool | None = None) -> torch.Tensor:
    """``net.embed(x)``: float32 ``[B, C, H, W]`` -> float32 ``[B, embed_dim]``, computed in channels_last.

    Without autograd (no grad mode, or neither ``x`` nor the parameters require grad) instance-norm
    blocks run the fused in-place path described in the module docstring; with autograd the modules
    run as they are, so gradients are exactly those of ``net.embed``. ``real_dtype=torch.bfloat16``
    (opt-in, changes numerics) runs the no-autograd path's convolutions in bfloat16; it is ignored
    when autograd is on. ``sync_free`` picks the no-read-back form of the fused path (module docstring);
    ``None`` means: on any device but the CPU.
    """
    if not isinstance(net, ConvNet):
        return net.embed(x)  # type: ignore[operator]
    h = x.contiguous(memory_format=torch.channels_last)
    no_grad = not torch.is_grad_enabled() or not (h.requires_grad or any(p.requires_grad for p in net.parameters()))
    layers = list(net.features)
    if sync_free is None:
        sync_free = h.device.type != "cpu"
    if not no_grad:
        return net.features(h).flatten(1)
    with torch.no_grad():
        for i in range(0, len(layers), 4):
            conv, norm, _, pool = layers[i: i + 4]
            if isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels and norm.affine:
                h = _conv_in_relu_pool(conv, norm, pool, h, first=i == 0, dtype=real_dtype,  # type: ignore[arg-type]
                                       sync_free=sync_free)
            else:
                h = pool(torch.relu_(norm(_conv(conv, h, real_dtype))))
    return h.flatten(1)


def _conv(conv: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``conv(x)`` as float32 channels-last; the convolution itself runs in ``dtype``."""
    if dtype == torch.float32 or not isinstance(conv, nn.Conv2d):
        return conv(x).contiguous(memory_format=torch.channels_last)
    bias = None if conv.bias is None else conv.bias.to(dtype)
    out = conv._conv_forward(x.to(dtype), conv.weight.to(dtype), bias)
    return out.to(torch.float32, memory_format=torch.channels_last)


def _conv_in_relu_pool(conv: nn.Conv2d, norm: nn.GroupNorm, pool: nn.AvgPool2d, x: torch.Tensor, *,
                       first: bool, dtype: torch.dtype, sync_free: bool) -> torch.Tensor:
    """``pool(relu(norm(conv(x))))`` for channels-last float32 ``x`` ``[B, C_in, H, W]`` (no autograd)."""
    h = _conv(conv, x, dtype)
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if first and conv.groups == 1 and k <= GRAM_MAX_K and not isinstance(conv.padding, str):
        mean, var = _gram_stats(conv, x)
    elif not sync_free:
        mean, var = _reduce_stats(h)
    else:
        var32, mean32 = torch.var_mean(h, dim=(2, 3), correction=0)
        mean, var = mean32.double(), var32.double()
    scale = norm.weight.double().view(1, -1) * torch.rsqrt(var + norm.eps)  # [B, C] float64
    beta = norm.bias.double().view(1, -1)
    shift = scale * mean - beta  # relu(s·(h - μ) + β) = s·relu(h - t), t = shift / s
    if sync_free:
        h = torch.addcmul(-shift.float()[:, :, None, None], h, scale.float()[:, :, None, None], out=h)
        return pool_2x2_nhwc(h.relu_()) if _is_2x2_mean(pool, h) else pool(h)
    if bool((norm.weight > 0).all()) and float(shift.abs().max()) <= MAX_SHIFT:
        t = (shift / scale).float()[:, :, None, None]
        torch.maximum(h, t, out=h)
        p = pool(h)
        return p.sub_(t).mul_(scale.float()[:, :, None, None])
    h.mul_(scale.float()[:, :, None, None]).sub_(shift.float()[:, :, None, None]).relu_()
    return pool(h)


def pool_2x2_nhwc(h: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(h, 2)`` for channels-last float32 ``h`` ``[B, C, H, W]`` with even ``H`` and ``W``, as a
    mean over a view of the NHWC storage: ``[B, C, H/2, W/2]``, channels-last.

    On an H200 this runs 3.4-3.9x faster than ``avg_pool2d``'s channels-last kernel and gives the same values
    to the bit (``benchmarks/pool_variants.py``); on the CPU it is slower, so only the device form uses it.
    """
    b, c, hh, ww = h.shape
    return h.permute(0, 2, 3, 1).reshape(b, hh // 2, 2, ww // 2, 2, c).mean((2, 4)).permute(0, 3, 1, 2)


def _is_2x2_mean(pool: nn.Module, h: torch.Tensor) -> bool:
    """Whether ``pool`` is a plain 2x2, stride-2 average pooling that :func:`pool_2x2_nhwc` reproduces on ``h``."""
    return (isinstance(pool, nn.AvgPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and not pool.ceil_mode and h.shape[2] % 2 == 0 and h.shape[3] % 2 == 0
            and h.is_contiguous(memory_format=torch.channels_last))


def _reduce_stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and biased variance of ``h`` ``[B, C, H, W]``: float64 ``[B, C]``."""
    mean32 = h.mean((2, 3))
    sq = torch.linalg.vector_norm(h, dim=(2, 3)).double().square_() / (h.shape[2] * h.shape[3])
    mean = mean32.double()
    var = (sq - mean * mean).clamp_min_(0.0)
    if bool((mean * mean > CANCEL_RATIO * var).any()):
        centred = h - mean32[:, :, None, None]
        var = torch.linalg.vector_norm(centred, dim=(2, 3)).double().square_() / (h.shape[2] * h.shape[3])
    return mean, var


def _gram_stats(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of ``conv(x)`` per sample and channel from the input patches alone.

    ``x`` float32 ``[B, C_in, H, W]``; returns float64 ``[B, C_out]`` twice. Uses the patch matrix
    ``U`` ``[B, K, L]`` (``K = C_in·kh·kw``, ``L`` output positions): ``μ = W·E[u] + b``,
    ``var = diag(W Cov(u) Wᵀ)``.
    """
    u = _patches(x, conv)
    n = u.shape[2]
    mu32 = u.mean(2, keepdim=True)  # [B, K, 1]
    u.sub_(mu32)
    cov = torch.bmm(u, u.transpose(1, 2)).double() / n  # [B, K, K]
    mu = mu32[:, :, 0].double()
    w = conv.weight.reshape(conv.out_channels, -1).double()  # [C, K]
    mean = mu @ w.t()
    if conv.bias is not None:
        mean = mean + conv.bias.double()
    var = ((cov @ w.t()) * w.t()).sum(1).clamp_min_(0.0)  # [B, C]
    return mean, var


def _patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The patch matrix of ``conv`` on ``x`` ``[B, C_in, H, W]``: contiguous ``[B, C_in·kh·kw, L]``.

    Same layout as ``F.unfold`` (channel-major, then kernel row, then column), built from strided
    views of the zero-padded input (``F.unfold`` is slow on channels-last inputs).
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding  # type: ignore[misc]
    xp = F.pad(x, (pw, pw, ph, ph))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    views = [xp[:, :, i * dh: i * dh + (ho - 1) * sh + 1: sh, j * dw: j * dw + (wo - 1) * sw + 1: sw]
             for i in range(kh) for j in range(kw)]
    return torch.stack(views, dim=2).reshape(x.shape[0], -1, ho * wo)
