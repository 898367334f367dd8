"""Embedding many images in batches without keeping graphs (for herding and pruning)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def embed_batched(net: nn.Module, get: Callable[[torch.Tensor], torch.Tensor], n: int, *,
                  device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """``net.embed`` of images ``get(idx)`` for ``idx`` in ``0..n-1``: float32 ``[n, D]`` on the CPU."""
    out = []
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(s + batch_size, n))
        out.append(net.embed(get(idx).to(device)).float().cpu())  # type: ignore[operator]
    return torch.cat(out) if out else torch.zeros(0, 0)
