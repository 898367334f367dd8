"""Readers: per-class random access for distillation, streaming loader, synthetic-set artifacts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import leftovers
from PIL import Image

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


def _mixed_folder(root: Path, extra: dict[str, Image.Image]) -> Path:
    """Classes ``a`` and ``b``, each with one 8-bit RGB PNG plus ``extra`` (file name -> image)."""
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / cls / "0.png")
        for name, img in extra.items():
            img.save(root / cls / name)
    return root


def test_image_folder_conversions_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Palette (P) and CMYK images are converted to RGB, and the ingest says so in one warning line (logger
    ``ddflow.data``) with the count per mode."""
    root = _mixed_folder(tmp_path / "imgs", {"1.png": Image.new("RGB", (8, 8), (200, 0, 0)).convert("P"),
                                             "2.jpg": Image.new("CMYK", (8, 8), (0, 50, 100, 0))})
    with caplog.at_level(logging.WARNING, logger="ddflow.data"):
        meta = ingest(IngestConfig.from_mapping({"source": {"kind": "image_folder", "root": str(root)}}),
                      tmp_path / "out")
    assert [r.getMessage() for r in caplog.records if r.name == "ddflow.data"] == [
        f"{root}: converted 4 of 6 images to RGB: 2 CMYK, 2 P; convert them yourself before ingesting to control how"]
    assert tuple(meta.image_shape) == (3, 8, 8) and meta.counts["train"]["total"] == 6


def test_sixteen_bit_images_are_refused_unless_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 16-bit PNG fails the ingest with one line naming it and the opt-in, leaving no output folder; with
    ``--allow-16bit`` it is converted (values above 255 clip) and the warning line says so."""
    from typer.testing import CliRunner

    from flows.cli import app

    root = _mixed_folder(tmp_path / "imgs", {"1.png": Image.fromarray(np.full((8, 8), 40000, np.uint16))})
    refused = CliRunner().invoke(app, ["ingest", str(root), "--out", str(tmp_path / "out")])
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "Traceback" not in refused.output, refused.output
    assert lines[0].startswith(f"error: {root / 'a' / '1.png'} has more than 8 bits per sample (mode I;16)")
    assert "--allow-16bit" in lines[0]
    assert leftovers(tmp_path, "out") == []
    with caplog.at_level(logging.WARNING, logger="ddflow.data"):
        allowed = CliRunner().invoke(app, ["ingest", str(root), "--out", str(tmp_path / "out"), "--allow-16bit"])
    assert allowed.exit_code == 0, allowed.output
    assert [r.getMessage() for r in caplog.records if r.name == "ddflow.data"] == [
        f"{root}: converted 2 of 4 images to RGB: 2 I;16 (clipped to 8 bits); convert them yourself before ingesting "
        "to control how"]
    art = open_artifact(tmp_path / "out")
    assert (art.read_arrays(art.class_rows("train")[0]) == 255).any()
