"""Readers: per-class random access for distillation, streaming loader, synthetic-set artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddcore.data import ArtifactSampler, IngestConfig, ingest, open_artifact, stream
from ddcore.data.synthetic_io import load_synthetic, save_synthetic
from ddcore.errors import DistillationError
from ddcore.synthetic import SyntheticSet


@pytest.fixture
def art(fake_fmnist: Path, tmp_path: Path):
    ingest(IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(fake_fmnist)},
                                      "shard_size": 25}), tmp_path / "a")
    return open_artifact(tmp_path / "a")


def test_class_index_matches_labels(art) -> None:
    """class_rows(split)[c] holds exactly the rows of class c in that split."""
    rows = art.class_rows("train")
    assert [len(r) for r in rows] == [12] * 10
    for c, r in enumerate(rows):
        assert (art.labels[r] == c).all() and (art.splits[r] == "train").all()


@pytest.mark.parametrize("cache", [True, False])
def test_sampler_random_access(art, cache: bool) -> None:
    """The sampler draws n distinct images of one class, seeded, identical cached or not."""
    s = ArtifactSampler(art, "train", cache=cache)
    a = s.sample(3, 5, torch.Generator().manual_seed(0))
    b = s.sample(3, 5, torch.Generator().manual_seed(0))
    assert a.shape == (5, 1, 28, 28) and torch.equal(a, b)
    full = art.read_tensor(art.class_rows("train")[3])
    assert all(any(torch.equal(x, y) for y in full) for x in a)
    assert s.sample(3, 100, torch.Generator().manual_seed(0)).shape[0] == 12


def test_sampler_respects_keep(art) -> None:
    """A kept subset (e.g. a pruned core set) restricts every class to those positions."""
    keep = [np.array([0, 2]) for _ in range(10)]
    s = ArtifactSampler(art, "train", keep=keep)
    assert s.class_size(0) == 2
    assert torch.equal(s.get(0, torch.tensor([1])), art.read_tensor(art.class_rows("train")[0][[2]]))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_yields_every_sample_once(art, workers: int) -> None:
    """Streaming a split yields each sample exactly once, with or without workers."""
    keys = [k for _, _, ks in stream(art, "train", batch_size=16, num_workers=workers) for k in ks]
    assert sorted(keys) == sorted(art.keys[r] for r in art.rows("train"))


def test_stream_shuffle_is_seeded(art) -> None:
    """The same shuffle seed gives the same order; another seed gives another order."""
    def order(seed: int) -> list[str]:
        return [k for _, _, ks in stream(art, "train", batch_size=32, shuffle_seed=seed) for k in ks]

    assert order(1) == order(1) and order(1) != order(2)
    x, y, _ = next(iter(stream(art, "test", batch_size=8)))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28) and y.dtype == torch.int64


def test_workers_more_than_shards(art) -> None:
    """Asking for more workers than shards is capped instead of failing."""
    n = sum(len(k) for _, _, k in stream(art, "test", batch_size=10, num_workers=4))
    assert n == 40


def _sset(n_cls: int = 3, ipc: int = 2, weights: bool = True) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(
        images=torch.randn(n_cls * ipc, 1, 6, 6, generator=g) * 3,
        labels=torch.arange(n_cls).repeat_interleave(ipc),
        mean=(0.3,), std=(0.4,), num_classes=n_cls, method="dm",
        config={"lr": 1.0}, seeds={"init": 7},
        weights=torch.rand(n_cls * ipc, generator=g) if weights else None,
        soft_labels=torch.softmax(torch.randn(n_cls * ipc, n_cls, generator=g), 1),
    )


def test_synthetic_set_round_trip_is_bit_exact(tmp_path: Path) -> None:
    """A synthetic set saved as an artifact loads back with identical floats, weights, soft labels, seeds."""
    s = _sset()
    meta = save_synthetic(s, tmp_path / "syn", classes=["a", "b", "c"], source={"name": "x"})
    back = load_synthetic(tmp_path / "syn")
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert torch.equal(back.weights, s.weights) and torch.equal(back.soft_labels, s.soft_labels)
    assert back.seeds == {"init": 7} and back.method == "dm" and meta.extra["ipc"] == 2
    assert meta.storage == "npy"


def test_synthetic_nan_refused(tmp_path: Path) -> None:
    """NaN images are refused, and nothing is written."""
    s = _sset(weights=False)
    s.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(DistillationError):
        save_synthetic(s, tmp_path / "syn", classes=["a", "b", "c"], source={})
    assert not (tmp_path / "syn").exists()


def test_weights_and_soft_labels_are_part_of_the_digest(tmp_path: Path) -> None:
    """Two sets with the same images but other weights (DDOQ vs D4M) or soft labels differ in digest."""
    s = _sset()
    a = save_synthetic(s, tmp_path / "a", classes=["a", "b", "c"], source={})
    s.weights = torch.ones_like(s.weights)
    b = save_synthetic(s, tmp_path / "b", classes=["a", "b", "c"], source={})
    s.soft_labels = torch.roll(s.soft_labels, 1, dims=1)
    c = save_synthetic(s, tmp_path / "c", classes=["a", "b", "c"], source={})
    assert len({a.digest, b.digest, c.digest}) == 3
