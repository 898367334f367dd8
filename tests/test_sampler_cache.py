"""The real-image cache of ArtifactSampler has a memory budget: classes are cached as first drawn until the next
would exceed it, later classes are read per draw, and every draw returns the same pixels as with no cache. The
device form of a sampler (``on``, what the distillation loop uses on a GPU) draws the same pixels too; its device
path is run here with the CPU as the device (tests/test_gpu.py runs it on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddcore.data import ArtifactSampler, IngestConfig, ingest, open_artifact
from ddcore.sampling import TensorSampler, on_device


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


def test_the_device_form_draws_the_same_pixels_cached_or_not(art) -> None:
    """ArtifactSampler.on(device) keeps its own cache (same budget, filled from empty, as tensors) and gathers and
    normalises there; every draw, from cached and uncached classes, equals the host sampler's bit for bit, and
    sample() draws the same rows for the same generator."""
    per_class = 20 * 8 * 8
    host = ArtifactSampler(art, cache_mb=2.5 * per_class / 2**20)
    host.get(0, torch.tensor([0]))
    dev = host.on(torch.device("cpu"))
    assert dev.device == torch.device("cpu") and dev.cached_bytes == 0 and host.device is None
    idx = torch.tensor([3, 0, 19, 7])
    for c in (0, 1, 2, 2, 1):
        got = dev.get(c, idx)
        assert isinstance(got, torch.Tensor) and torch.equal(got, host.get(c, idx))
    assert sorted(dev._cached) == [0, 1] and all(isinstance(v, torch.Tensor) for v in dev._cached.values())
    for c in range(3):
        a = host.sample(c, 5, torch.Generator().manual_seed(c))
        assert torch.equal(dev.sample(c, 5, torch.Generator().manual_seed(c)), a)


def test_a_tensor_sampler_on_a_device_draws_the_same_images() -> None:
    """TensorSampler.on(device) moves its images once and gathers there: the same draws as on the host."""
    g = torch.Generator().manual_seed(0)
    s = TensorSampler(torch.randn(30, 1, 4, 4, generator=g), torch.arange(3).repeat(10), 3, (0.0,), (1.0,))
    d = s.on(torch.device("cpu"))
    for c in range(3):
        draws = [x.sample(c, 4, torch.Generator().manual_seed(9)) for x in (d, s)]
        assert torch.equal(*draws)


def test_on_device_keeps_host_samplers_on_the_cpu(art) -> None:
    """on_device leaves a sampler as it is on the CPU (the host path, numpy cache) and for samplers without on()."""
    host = ArtifactSampler(art)
    assert on_device(host, "cpu") is host

    class Plain:
        pass

    plain = Plain()
    assert on_device(plain, "cuda") is plain  # type: ignore[arg-type]
