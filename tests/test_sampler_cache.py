"""The real-image cache of ArtifactSampler has a memory budget: classes are cached as first drawn until the next
would exceed it, later classes are read per draw, and every draw returns the same pixels as with no cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcore.data import ArtifactSampler, IngestConfig, ingest, open_artifact


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 255, (60, 8, 8), dtype=np.uint8), y=np.repeat(np.arange(3), 20))
    ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": str(root / "d.npz")}}), root / "a")
    return open_artifact(root / "a")


def test_the_cache_fills_to_its_budget_and_draws_stay_the_same(art) -> None:
    """With room for two classes (20 images x 64 pixels, kept as uint8), classes 0 and 1 are cached, class 2
    is not, and draws from every class equal the uncached sampler's bit for bit."""
    per_class = 20 * 8 * 8
    budget = ArtifactSampler(art, cache_mb=2.5 * per_class / 2**20)
    never = ArtifactSampler(art, cache=False)
    assert not budget.cache and not never.cache and ArtifactSampler(art).cache
    idx = torch.tensor([3, 0, 19])
    for c in (0, 1, 2, 0, 2):
        assert torch.equal(budget.get(c, idx), never.get(c, idx))
    assert sorted(budget._cached) == [0, 1] and budget.cached_bytes == 2 * per_class <= 2.5 * per_class
    assert never.cached_bytes == 0


def test_the_distill_budget_is_no_part_of_the_config_identity() -> None:
    """real_cache_mb changes what is held in memory, not the set: the config digest ignores it."""
    from ddcore.distill.config import DistillConfig

    a, b = DistillConfig(method="dm"), DistillConfig(method="dm", real_cache_mb=10)
    assert b.real_cache_mb == 10 and a.digest() == b.digest()
