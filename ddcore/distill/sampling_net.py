"""Frequency sampling for NCFM (docs/methods.md §4.2): the default ``N(0, I)`` draw and the optional net psi.

Without psi (every released NCFM config), ``t ~ N(0, I_D)`` is drawn fresh on every loss call:
:func:`gaussian_frequencies`. With psi, :class:`FrequencySampler` produces ``t [F, D]`` and is trained
to *maximise* the NCFD (min-max: images descend, psi ascends). Two kinds:

- ``kind="mixture"`` (paper-faithful): a scale mixture of normals with ``M = ceil(F / group)``
  components; component ``m`` has a learnable log-scale (one per component, or one per dimension with
  ``diagonal=True``) and contributes ``group`` reparameterised draws ``exp(log_scale_m) * z``,
  ``z ~ N(0, I)``. At initialisation (log-scales 0) it is exactly the default ``N(0, I)`` sampler (to the bit on
  the CPU; on a GPU in distribution, the device generator drawing another shape).
- ``kind="code"`` (code-faithful to the released ``SampleNet``): noise ``[M, D] ~ N(0, I)`` through
  3 x (Linear D->D, BatchNorm1d, activation) with LeakyReLU(0.2), LeakyReLU(0.2), Tanh; the ``[M, D]``
  output is tiled ``group`` times to ``[F, D]``. ``t`` is bounded in ``[-1, 1]`` and has only ``M``
  distinct rows (the reference's mixture multiplication is commented out).

Training (one backward serves both players)::

    psi_opt = build_psi_optimizer(psi, lr=1e-3, momentum=0.5)   # SGD(maximize=True), reference values
    t = psi(generator)                                          # [F, D], graph into psi
    loss = ncfm_loss(real_feat, syn_feat, t, alpha=..., beta=..., scale=...)
    img_opt.zero_grad(); psi_opt.zero_grad(); loss.backward()
    img_opt.step()                                              # descent on the images
    psi_step(psi_opt)                                           # ascent on psi, then clears its grads
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ddcore.seeding import normal

SamplerKind = Literal["mixture", "code"]


def gaussian_frequencies(
    num_freqs: int,
    dim: int,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Default frequencies ``t ~ N(0, I_D)`` on ``device`` (default: the generator's device).

    Drawn by :func:`ddcore.seeding.normal`: on a GPU from a device generator seeded by one draw of ``generator``.

    Returns:
        ``[num_freqs, dim]`` of ``dtype``.
    """
    return normal((num_freqs, dim), generator=generator, device=device, dtype=dtype)


class FrequencySampler(nn.Module):
    """NCFM's sampling network psi; ``forward(generator) -> t [num_freqs, dim]`` (float32).

    Args:
        num_freqs: ``F``, rows of ``t`` (4096 in the reference configs).
        dim: ``D``, the feature dimension (2048 for ConvNet embeddings at 32 px).
        kind: ``"mixture"`` (paper) or ``"code"`` (released code); see the module docstring.
        group: rows per component / tiling factor; ``M = ceil(F / group)`` (16 in the reference).
        diagonal: mixture kind only: per-dimension log-scales ``[M, D]`` instead of ``[M, 1]``.
        seed: seeds the parameter initialisation (the ``code`` kind's Linear layers).
    """

    def __init__(
        self,
        num_freqs: int,
        dim: int,
        *,
        kind: SamplerKind = "mixture",
        group: int = 16,
        diagonal: bool = False,
        seed: int,
    ) -> None:
        super().__init__()
        if num_freqs < 1 or dim < 1 or group < 1:
            raise ValueError(f"num_freqs, dim and group must be >= 1, got {num_freqs}, {dim}, {group}")
        if kind not in ("mixture", "code"):
            raise ValueError(f"kind must be 'mixture' or 'code', got {kind!r}")
        self.num_freqs, self.dim, self.kind, self.group = num_freqs, dim, kind, group
        self.num_components = math.ceil(num_freqs / group)
        if kind == "code" and self.num_components < 2:
            raise ValueError(
                f"kind='code' needs num_freqs >= 2*group={2 * group} (BatchNorm over components)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "mixture":
                self.log_scales = nn.Parameter(torch.zeros(self.num_components, dim if diagonal else 1))
            else:
                layers: list[nn.Module] = []
                for act in (nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.Tanh()):
                    layers += [nn.Linear(dim, dim), nn.BatchNorm1d(dim), act]
                self.net = nn.Sequential(*layers)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, generator: torch.Generator) -> torch.Tensor:
        """Draw ``t``: ``[num_freqs, dim]`` float32 on the module's device, differentiable in psi."""
        m, d, dev = self.num_components, self.dim, self._device()
        if self.kind == "mixture":
            z = normal((m, self.group, d), generator=generator, device=dev)
            t = torch.exp(self.log_scales).unsqueeze(1) * z
            return t.reshape(m * self.group, d)[: self.num_freqs]
        noise = normal((m, d), generator=generator, device=dev)
        return self.net(noise).repeat(self.group, 1)[: self.num_freqs]


def build_psi_optimizer(psi: nn.Module, *, lr: float, momentum: float) -> torch.optim.SGD:
    """SGD with ``maximize=True`` for psi (reference: lr 1e-3, momentum 0.5)."""
    return torch.optim.SGD(psi.parameters(), lr=lr, momentum=momentum, maximize=True)


def psi_step(optimizer: torch.optim.Optimizer) -> None:
    """One ascent step of psi after ``loss.backward()``, then clear psi's gradients.

    Raises:
        ValueError: if ``optimizer`` does not maximise (build it with :func:`build_psi_optimizer`).
    """
    if not all(g.get("maximize", False) for g in optimizer.param_groups):
        raise ValueError("psi's optimizer must ascend the NCFD; build it with build_psi_optimizer()")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
