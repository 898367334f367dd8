"""Per-class Siamese batches shared by the matching methods.

For each class, a real batch is drawn and ONE augmentation draw is applied to both the real batch and
the class's synthetic images, so the two sides see the same transform (the Siamese property); the
augmented batches of all classes are concatenated for a single forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddcore.augment.dsa import DSAParams, apply
from ddcore.sampling import RealSampler
from ddcore.seeding import IterationRng

DrawFn = Callable[[int, tuple[int, ...], torch.Generator], DSAParams]
"""``draw(batch, image_shape, generator) -> params`` of one Siamese augmentation."""


@dataclass
class ClassBatches:
    """Augmented real and synthetic images of several classes with their labels.

    Attributes:
        real: float32 ``[N_r, C, H, W]``; syn: ``[N_s, C, H, W]`` (graph to the synthetic images).
        real_labels, syn_labels: int64 ``[N_r]`` / ``[N_s]`` on the images' device.
    """

    real: torch.Tensor
    syn: torch.Tensor
    real_labels: torch.Tensor
    syn_labels: torch.Tensor


def siamese_batches(sampler: RealSampler, classes: Sequence[int], syn: torch.Tensor, labels: torch.Tensor, *,
                    batch_real: int, draw: DrawFn, rng: IterationRng,
                    device: torch.device) -> ClassBatches:
    """Build :class:`ClassBatches` for ``classes``; class ``c`` draws only from ``rng.for_class(c)``."""
    real_aug, syn_aug, real_lab, syn_lab = [], [], [], []
    shape = tuple(syn.shape[1:])
    labels = labels.to(syn.device)
    for c in classes:
        generator = rng.for_class(c)
        real = sampler.sample(c, batch_real, generator).to(device)
        params = draw(real.shape[0], shape, generator)
        mine = syn[labels == c]
        real_aug.append(apply(real, params))
        syn_aug.append(apply(mine, params))
        real_lab.append(torch.full((real.shape[0],), c, dtype=torch.int64))
        syn_lab.append(torch.full((mine.shape[0],), c, dtype=torch.int64))
    return ClassBatches(torch.cat(real_aug), torch.cat(syn_aug), torch.cat(real_lab).to(device),
                        torch.cat(syn_lab).to(device))
