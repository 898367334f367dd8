"""Selection baselines (docs/methods.md §6): a random real subset and herding.

Herding picks, per class, samples greedily so the running mean of the chosen embeddings tracks the
class mean embedding (Welling 2009). The embedding is a seeded ConvNet, random or briefly trained on
the real data (``feature_net``); which one the DM paper used is unverified, so both are offered.
"""

from __future__ import annotations

import torch

from ddcore.distill.config import BaselineConfig
from ddcore.distill.features import embed_batched
from ddcore.distill.init import check_ipc
from ddcore.distill.pool import all_real, train_classifier
from ddcore.sampling import RealSampler
from ddcore.seeding import iteration_generator
from ddcore.synthetic import SyntheticSet


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``features [N, D]`` chosen greedily so their mean tracks the mean.

    Returns:
        int64 ``[k]`` distinct indices in selection order.
    """
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for i in range(k):
        # candidate means after adding each row: (running * i + f) / (i + 1)
        cand = (running * i + features) / (i + 1)
        dist = (cand - mu).square().sum(1)
        dist[~available] = float("inf")
        j = int(torch.argmin(dist).item())
        chosen.append(j)
        available[j] = False
        running = cand[j]
    return torch.tensor(chosen, dtype=torch.int64)


def select_baseline(sampler: RealSampler, cfg: BaselineConfig, *, device: str | torch.device = "cpu") -> SyntheticSet:
    """``cfg.ipc`` real images per class, chosen at random or by herding; keys are class positions."""
    check_ipc(sampler, cfg.ipc)
    dev = torch.device(device)
    net = None
    if cfg.method == "herding":
        c, h, _ = sampler.image_shape
        net = cfg.network_spec.build(channels=c, num_classes=sampler.num_classes, image_size=h, seed=cfg.seed)
        if cfg.feature_net == "trained":
            x, y = all_real(sampler)
            train_classifier(net, x, y, epochs=cfg.train_epochs, lr=0.01, batch_size=256, seed=cfg.seed, device=dev)
        net = net.to(dev).eval()
    images, labels, picked = [], [], []
    for c in range(sampler.num_classes):
        n = sampler.class_size(c)
        if cfg.method == "random":
            idx = torch.randperm(n, generator=iteration_generator(cfg.seed, c, "random-subset"))[: cfg.ipc]
        else:
            feats = embed_batched(net, lambda sl, c=c: sampler.get(c, sl), n, device=dev)  # type: ignore[arg-type]
            idx = herding_order(feats, cfg.ipc)
        images.append(sampler.get(c, idx))
        labels.append(torch.full((len(idx),), c, dtype=torch.int64))
        picked.append(idx.tolist())
    keys = _keys(sampler, picked)
    return SyntheticSet(images=torch.cat(images).cpu(), labels=torch.cat(labels), mean=tuple(sampler.mean),
                        std=tuple(sampler.std), num_classes=sampler.num_classes, method=cfg.method,
                        config=cfg.model_dump(mode="json"), seeds={"select": cfg.seed}, keys=keys,
                        extra={"positions": picked})


def _keys(sampler: RealSampler, picked: list[list[int]]) -> list[str] | None:
    class_keys = getattr(sampler, "class_keys", None)
    if class_keys is None:
        return None
    return [class_keys(c)[i] for c, idx in enumerate(picked) for i in idx]
