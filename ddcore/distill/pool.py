"""NCFM's pool of pretrained feature extractors (docs/methods.md §4.4), also used by herding.

Each member is a ConvNet trained on the real data from a seeded initialisation; both the initial
and the trained weights are kept, because NCFM matches with a random blend of the two. Training uses
SGD (momentum 0.9, weight decay 5e-4), step decay x0.2 at 2/3 and 5/6 of the epochs, and per-sample
DSA augmentation. CutMix from the reference recipe is not applied here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.augment.dsa import DEFAULT_STRATEGY, apply, draw_params
from ddcore.checkpoint import load_state, save_state
from ddcore.errors import ArtifactError, DataError
from ddcore.nets.registry import build_network
from ddcore.sampling import RealSampler
from ddcore.seeding import iteration_generator

StateDict = dict[str, torch.Tensor]


def all_real(sampler: RealSampler) -> tuple[torch.Tensor, torch.Tensor]:
    """Every real image of the sampler with its label, class by class: float32 ``[N, C, H, W]``, int64 ``[N]``.

    Raises:
        DataError: the sampler holds no image.
    """
    xs, ys = [], []
    for c in range(sampler.num_classes):
        n = sampler.class_size(c)
        if n:
            xs.append(sampler.get(c, torch.arange(n)).to(torch.float32))
            ys.append(torch.full((n,), c, dtype=torch.int64))
    if not xs:
        raise DataError("the real training split is empty; ingest a dataset with a train split")
    return torch.cat(xs), torch.cat(ys)


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                     batch_size: int, seed: int, device: torch.device, strategy: str = DEFAULT_STRATEGY) -> nn.Module:
    """Train ``net`` on ``(x, y)`` with SGD and DSA; deterministic for a fixed seed on CPU."""
    net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    milestones = [int(epochs * 2 / 3), int(epochs * 5 / 6)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[m for m in milestones if m > 0], gamma=0.2)
    for epoch in range(epochs):
        g = iteration_generator(seed, epoch, "pool-epoch")
        perm = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            params = draw_params(strategy, batch=xb.shape[0], image_shape=tuple(xb.shape[1:]), generator=g,
                                 siamese=False)
            loss = F.cross_entropy(net(apply(xb, params)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return net.eval()


class FeaturePool:
    """``K`` pairs of (initial, trained) weights of one architecture."""

    def __init__(self, spec: dict, members: list[tuple[StateDict, StateDict]]) -> None:
        self.spec, self.members = spec, members
        self._final_cache: dict[int, nn.Module] = {}
        self._device_cache: dict[tuple[int, str], tuple[StateDict, StateDict]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def _build(self) -> nn.Module:
        return build_network(**self.spec)

    @torch.no_grad()
    def blend_into(self, net: nn.Module, index: int, lam: float) -> None:
        """Load ``lam * init + (1 - lam) * final`` of member ``index`` into ``net``, blended on ``net``'s device (the
        member's weights are copied there once and kept: no host-to-device copy per iteration)."""
        device = next(net.parameters()).device
        init, final = self._member_on(index, device)
        net.load_state_dict({k: lam * init[k] + (1 - lam) * final[k] if init[k].is_floating_point() else final[k]
                             for k in final})

    def _member_on(self, index: int, device: torch.device) -> tuple[StateDict, StateDict]:
        if device.type == "cpu":
            return self.members[index]
        key = (index, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = tuple({k: v.to(device) for k, v in sd.items()}  # type: ignore[assignment]
                                            for sd in self.members[index])
        return self._device_cache[key]

    def final_model(self, index: int, device: torch.device) -> nn.Module:
        """Member ``index`` with its trained weights, frozen, in eval mode."""
        if index not in self._final_cache:
            net = self._build()
            net.load_state_dict(self.members[index][1])
            for p in net.parameters():
                p.requires_grad_(False)
            self._final_cache[index] = net.to(device).eval()
        return self._final_cache[index]

    def save(self, path: str | Path) -> None:
        save_state(path, {"spec": self.spec, "members": [{"init": i, "final": f} for i, f in self.members]})

    @classmethod
    def saved(cls, path: str | Path) -> FeaturePool | None:
        """The pool saved at ``path`` (local path or fsspec URL), or ``None`` when nothing is saved there."""
        data = load_state(path, what="feature pool")
        return None if data is None else cls(data["spec"], [(m["init"], m["final"]) for m in data["members"]])

    @classmethod
    def load(cls, path: str | Path) -> FeaturePool:
        pool = cls.saved(path)
        if pool is None:
            raise ArtifactError(f"feature pool {path} does not exist; train the pool again (rerun the stage)")
        return pool


def train_pool(sampler: RealSampler, *, num_models: int, epochs: int, lr: float, batch_size: int, seed: int,
               network: str, width: int, depth: int | None, device: torch.device) -> FeaturePool:
    """Train ``num_models`` ConvNets (seeds ``seed + m``) on all real images of ``sampler``."""
    c, h, _ = sampler.image_shape
    x, y = all_real(sampler)
    members = []
    spec = {"name": network, "channels": c, "num_classes": sampler.num_classes, "image_size": h,
            "width": width, "depth": depth, "seed": seed}
    for m in range(num_models):
        net = build_network(**{**spec, "seed": seed + m})
        init = {k: v.detach().clone() for k, v in net.state_dict().items()}
        train_classifier(net, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + m, device=device)
        members.append((init, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}))
    return FeaturePool(spec, members)
