"""Per-class Siamese batches shared by the matching methods.

For each class, a real batch is drawn and ONE augmentation draw is applied to both the real batch and
the class's synthetic images, so the two sides see the same transform (the Siamese property); the
augmented batches of all classes are concatenated for a single forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddcore.augment.dsa import DSAParams, apply_each
from ddcore.sampling import RealSampler
from ddcore.seeding import IterationRng

DrawFn = Callable[[int, tuple[int, ...], torch.Generator], DSAParams]
"""``draw(batch, image_shape, generator) -> params`` of one Siamese augmentation."""


@dataclass
class ClassBatches:
    """Augmented real and synthetic images of several classes with their labels.

    Attributes:
        real: float32 ``[N_r, C, H, W]``; syn: ``[N_s, C, H, W]`` (graph to the synthetic images).
        real_labels, syn_labels: int64 ``[N_r]`` / ``[N_s]`` on the images' device, chunk-local: the ``i``-th
            class of the chunk is label ``i``, and every label in ``[0, len(classes))`` occurs on both sides
            (a batched loss takes ``num_classes=len(classes), all_present=True``: no host round trip).
    """

    real: torch.Tensor
    syn: torch.Tensor
    real_labels: torch.Tensor
    syn_labels: torch.Tensor


def siamese_batches(sampler: RealSampler, classes: Sequence[int], syn: torch.Tensor, labels: torch.Tensor, *,
                    batch_real: int, draw: DrawFn, rng: IterationRng,
                    device: torch.device) -> ClassBatches:
    """Build :class:`ClassBatches` for ``classes``; class ``c`` draws only from ``rng.for_class(c)``.

    ``labels`` (int64 ``[N_s]``, the classes of ``syn``'s rows) should live on the CPU: the rows of each class are
    found there, and real batches and indices go to ``device`` as non-blocking copies, so on a GPU the only
    waits are the host's own (no read-back). Raises ValueError if a class has no real or no synthetic sample.
    """
    reals, drawn, real_n = [], [], []
    shape = tuple(syn.shape[1:])
    wanted = torch.tensor(list(classes), dtype=torch.int64)
    # (position in classes, row) of every synthetic row of the chunk, class by class, rows ascending: one host
    # lookup and one device gather for all classes
    hits = torch.nonzero(labels.cpu().unsqueeze(0) == wanted.unsqueeze(1))
    syn_n = torch.bincount(hits[:, 0], minlength=len(wanted)).tolist()
    mines = list(syn.index_select(0, hits[:, 1].to(syn.device, non_blocking=True)).split(syn_n))
    for c, n_syn in zip(classes, syn_n, strict=True):
        generator = rng.for_class(c)
        real = sampler.sample(c, batch_real, generator).to(device, non_blocking=True)
        if real.shape[0] == 0 or n_syn == 0:
            raise ValueError(f"class {c} has {real.shape[0]} real and {n_syn} synthetic samples in this "
                             "batch; every distilled class needs both")
        drawn.append(draw(real.shape[0], shape, generator))
        reals.append(real)
        real_n.append(real.shape[0])
    # the real side apart from the synthetic one: only the latter carries a graph to keep until backward
    real_aug, syn_aug = apply_each(reals, drawn), apply_each(mines, drawn)
    local = torch.arange(len(real_n), dtype=torch.int64)
    return ClassBatches(torch.cat(real_aug), torch.cat(syn_aug),
                        local.repeat_interleave(torch.tensor(real_n)).to(device, non_blocking=True),
                        local.repeat_interleave(torch.tensor(syn_n)).to(device, non_blocking=True))
