"""One optimisation step of DM and HDD (docs/methods.md §2, §3), batched over classes.

Per iteration a fresh random ConvNet (re-initialised in place from the iteration seed) embeds, for
every class, a Siamese-augmented batch of real images and the class's synthetic images. With instance
norm every sample is normalised on its own, so putting all classes through one forward pass gives
exactly the per-class features; ``class_chunk`` splits the pass to bound memory and accumulates the
same gradients. One image-optimiser step follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ddcore.augment.dsa import DSAParams, draw_params
from ddcore.distill.batches import siamese_batches
from ddcore.distill.config import DistillConfig, distilled_classes
from ddcore.distill.losses import dm_loss_batched, hdd_loss_batched
from ddcore.nets.fast import fast_embed, prepare
from ddcore.nets.registry import reinit_
from ddcore.sampling import RealSampler
from ddcore.seeding import IterationRng, draw_seed

FeatureLoss = Callable[..., torch.Tensor]


def class_chunks(classes: Sequence[int], chunk: int | None) -> list[list[int]]:
    """``classes`` in groups of ``chunk`` (one group with every class when ``None``)."""
    classes = list(classes)
    size = len(classes) if chunk is None else max(1, chunk)
    return [classes[s : s + size] for s in range(0, len(classes), max(1, size))]


def feature_loss(cfg: DistillConfig) -> FeatureLoss:
    """The batched matching loss of ``cfg.method`` (indexed layout: features + labels)."""
    if cfg.method == "dm":
        return dm_loss_batched
    h = cfg.hdd

    def hdd(real: torch.Tensor, syn: torch.Tensor, **kw: object) -> torch.Tensor:
        return hdd_loss_batched(real, syn, k=h.k, scale=h.scale, clamp_radius=h.clamp_radius, **kw)

    return hdd


class MatchingStep:
    """Callable step ``(syn, labels, optimizer, rng) -> loss`` for DM or HDD (``cfg.classes`` only).

    Args:
        sampler: real images per class.
        cfg: the run's config.
        device: where the network and batches live.
    """

    def __init__(self, sampler: RealSampler, cfg: DistillConfig, device: torch.device) -> None:
        self.sampler, self.cfg, self.device = sampler, cfg, device
        c, h, _ = sampler.image_shape
        self.net = cfg.network_spec.build(channels=c, num_classes=sampler.num_classes, image_size=h,
                                          seed=cfg.seed).to(device)
        prepare(self.net).train()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.loss_fn = feature_loss(cfg)

    @classmethod
    def build(cls, sampler: RealSampler, cfg: DistillConfig, device: torch.device,
              checkpoint_dir: str | Path | None = None, pool: object = None) -> MatchingStep:
        """The step of a DM/HDD run (no pool, nothing to restore from ``checkpoint_dir``)."""
        del checkpoint_dir, pool
        return cls(sampler, cfg, device)

    def optimizer(self, syn: torch.Tensor) -> torch.optim.Optimizer:
        """SGD with momentum on the normalised images (the DM/HDD reference optimiser)."""
        return torch.optim.SGD([syn], lr=self.cfg.lr_img, momentum=self.cfg.momentum)

    def initial(self, images: torch.Tensor) -> torch.Tensor:
        """DM/HDD optimise the initial images as they are (normalised space)."""
        return images

    def finalize(self, syn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The stored set: the optimised images and labels as they are, no extra manifest fields."""
        return syn, labels, {}

    def seeds(self) -> dict[str, int]:
        return {"distill": self.cfg.seed}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        del state

    def __call__(self, syn: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 rng: IterationRng) -> dict[str, float]:
        cfg = self.cfg
        reinit_(self.net, draw_seed(rng.shared))
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for chunk in class_chunks(distilled_classes(cfg, self.sampler.num_classes), cfg.class_chunk):
            total = total + self._chunk_loss(chunk, syn, labels, rng)
        optimizer.step()
        return {"loss": float(total)}  # the iteration's one read-back

    def _chunk_loss(self, chunk: list[int], syn: torch.Tensor, labels: torch.Tensor,
                    rng: IterationRng) -> torch.Tensor:
        """The chunk's loss, back-propagated into ``syn.grad``; returned detached (still on the device)."""
        cfg = self.cfg

        def draw(n: int, shape: tuple[int, ...], g: torch.Generator) -> DSAParams:
            return draw_params(cfg.dsa_strategy, batch=n, image_shape=shape, generator=g, siamese=True)  # type: ignore[arg-type]

        b = siamese_batches(self.sampler, chunk, syn, labels, batch_real=cfg.batch_real, draw=draw,
                            rng=rng, device=self.device)
        with torch.no_grad():
            fr = embed(self.net, b.real)
        fs = embed(self.net, b.syn)
        loss = self.loss_fn(fr, fs, real_labels=b.real_labels, syn_labels=b.syn_labels,
                            num_classes=len(chunk), all_present=True)
        loss.backward()
        return loss.detach()


def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.embed(x)`` -> ``[B, D]`` (channels_last fast path, same values)."""
    return fast_embed(net, x)
