"""CutMix (Yun et al., 2019) as a pure function with an explicit generator (NCFM evaluation, §4.6).

With probability ``prob`` a box of area fraction ≈ 1 − λ, λ ~ Beta(β, β), is pasted into every image
from the image at ``perm[i]`` of the same batch. The loss is then λ·ℓ(y) + (1 − λ)·ℓ(y[perm]), with
λ recomputed from the clipped box area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CutMixDraw:
    """A drawn CutMix: ``perm`` int64 ``[B]`` partner indices, box rows ``[top, bottom)`` and columns
    ``[left, right)``, and ``lam`` the fraction of each image that is still its own."""

    applied: bool
    perm: torch.Tensor
    top: int
    bottom: int
    left: int
    right: int
    lam: float


def _beta(beta: float, generator: torch.Generator) -> float:
    if beta == 1.0:  # Beta(1, 1) is U(0, 1)
        return float(torch.rand(1, generator=generator).item())
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(beta, beta))


def draw_cutmix(
    batch: int,
    image_size: tuple[int, int],
    *,
    generator: torch.Generator,
    beta: float = 1.0,
    prob: float = 0.5,
) -> CutMixDraw:
    """Draw whether to mix, λ, the partner permutation and the box for ``batch`` images of ``(H, W)``."""
    h, w = image_size
    identity = torch.arange(batch)
    if beta <= 0 or float(torch.rand(1, generator=generator).item()) >= prob:
        return CutMixDraw(False, identity, 0, 0, 0, 0, 1.0)
    lam = _beta(beta, generator)
    perm = torch.randperm(batch, generator=generator)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator).item())
    cx = int(torch.randint(0, w, (1,), generator=generator).item())
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
    return CutMixDraw(True, perm, top, bottom, left, right, lam)


def apply_cutmix(x: torch.Tensor, draw: CutMixDraw) -> torch.Tensor:
    """Paste the box of ``x[perm]`` into ``x`` (float ``[B, C, H, W]``); pure and differentiable."""
    if not draw.applied:
        return x
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= draw.top) & (rows < draw.bottom)
    in_cols = (cols >= draw.left) & (cols < draw.right)
    box = in_rows.view(h, 1) & in_cols.view(1, w)
    return torch.where(box, x[draw.perm.to(x.device)], x)


def cutmix(
    x: torch.Tensor, *, generator: torch.Generator, beta: float = 1.0, prob: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix ``x``: returns ``(mixed, perm, lam)``.

    Combine per-sample losses as λ·ℓ(y) + (1 − λ)·ℓ(y[perm]).
    """
    draw = draw_cutmix(x.shape[0], (x.shape[2], x.shape[3]), generator=generator, beta=beta, prob=prob)
    return apply_cutmix(x, draw), draw.perm, draw.lam
