"""Per-class distillation steps written the way the reference code does them (for speed comparison).

DM/HDD (VICO ``main_DM.py``, ``DM-HDD``): for every class separately, draw a real batch, draw one
Siamese DSA parameter set, embed the real batch *with autograd on* and detach afterwards, embed the
class's synthetic images, add the class loss; one image step per iteration. NCFM (``NCFM.py``): per
class, embed augmented real and synthetic batches, compute the class loss and take an image step per
class. Same networks, augmentation and losses as ddflow, so only the loop structure differs.
"""

from __future__ import annotations

import torch

from ddcore.augment.dsa import IDC_STRATEGY, apply, draw_params, draw_sequence, parse_strategy
from ddcore.distill.config import DistillConfig
from ddcore.distill.losses import dm_loss, hdd_loss, ncfm_loss
from ddcore.distill.sampling_net import gaussian_frequencies
from ddcore.nets.registry import reinit_
from ddcore.sampling import RealSampler
from ddcore.seeding import draw_seed


class ReferenceStyleStep:
    """``(syn, labels, optimizer, generator) -> {"loss": float}`` with a per-class loop."""

    def __init__(self, sampler: RealSampler, cfg: DistillConfig, device: torch.device) -> None:
        self.sampler, self.cfg, self.device = sampler, cfg, device
        c, h, _ = sampler.image_shape
        self.net = cfg.network_spec.build(channels=c, num_classes=sampler.num_classes, image_size=h,
                                          seed=cfg.seed).to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def __call__(self, syn: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator) -> dict[str, float]:
        cfg = self.cfg
        reinit_(self.net, draw_seed(generator))
        shape = tuple(syn.shape[1:])
        if cfg.method == "ncfm":
            total = 0.0
            fams = parse_strategy(IDC_STRATEGY)
            for c in range(self.sampler.num_classes):
                real = self.sampler.sample(c, cfg.batch_real, generator).to(self.device)
                params = draw_sequence(fams, batch=real.shape[0], image_shape=shape, generator=generator, siamese=True)
                both = apply(torch.cat([real, syn[labels == c]]), params)
                feat = self.net.embed(both)
                t = gaussian_frequencies(cfg.ncfm.num_freqs, feat.shape[1], generator=generator, device=self.device)
                loss = ncfm_loss(feat[: real.shape[0]].detach(), feat[real.shape[0]:], t, alpha=cfg.ncfm.alpha,
                                 beta=cfg.ncfm.beta, scale=cfg.ncfm.scale)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            return {"loss": total}
        loss = torch.zeros((), device=self.device)
        for c in range(self.sampler.num_classes):
            real = self.sampler.sample(c, cfg.batch_real, generator).to(self.device)
            params = draw_params(cfg.dsa_strategy, batch=real.shape[0], image_shape=shape, generator=generator,
                                 siamese=True)
            out_real = self.net.embed(apply(real.requires_grad_(False), params)).detach()
            out_syn = self.net.embed(apply(syn[labels == c], params))
            if cfg.method == "dm":
                loss = loss + dm_loss(out_real, out_syn)
            else:
                h = cfg.hdd
                loss = loss + hdd_loss(out_real, out_syn, k=h.k, scale=h.scale, clamp_radius=h.clamp_radius)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}
