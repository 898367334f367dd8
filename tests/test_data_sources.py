"""Round trips source -> artifact -> reader for every source kind, on generated data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import FMNIST_DIR, class_images
from PIL import Image

from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.data.codec import encode_png


def _ingest(source: dict, out: Path, **kw) -> object:
    return ingest(IngestConfig.from_mapping({"source": source, **kw}), out)


def test_fashion_mnist_idx_round_trip(fake_fmnist: Path, tmp_path: Path) -> None:
    """IDX images and labels come back bit-exact, per split, with 10 named classes at 1x28x28."""
    meta = _ingest({"kind": "fashion_mnist", "root": str(fake_fmnist)}, tmp_path / "a", shard_size=50)
    art = open_artifact(tmp_path / "a", verify="full")
    assert meta.counts["train"]["total"] == 120 and meta.counts["test"]["total"] == 40
    assert meta.image_shape == [1, 28, 28] and meta.classes[0] == "T-shirt/top"
    assert len([s for s in meta.shards if s.startswith("train-")]) == 3
    from ddcore.data.sources.idx import read_idx

    x = read_idx(fake_fmnist / "train-images-idx3-ubyte.gz")
    y = read_idx(fake_fmnist / "train-labels-idx1-ubyte.gz")
    rows = art.rows("train")
    np.testing.assert_array_equal(art.read_arrays(rows)[..., 0], x)
    np.testing.assert_array_equal(art.labels[rows], y)


def test_ingest_is_deterministic(fake_fmnist: Path, tmp_path: Path) -> None:
    """Ingesting the same input twice gives byte-identical shards, manifest digest and metadata."""
    m1 = _ingest({"kind": "fashion_mnist", "root": str(fake_fmnist)}, tmp_path / "a", shard_size=33)
    m2 = _ingest({"kind": "fashion_mnist", "root": str(fake_fmnist)}, tmp_path / "b", shard_size=33)
    assert m1.digest == m2.digest and m1.shards == m2.shards
    for name in m1.shards:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "dataset.json").read_text() == (tmp_path / "b" / "dataset.json").read_text()


def test_image_folder_with_seeded_split(tmp_path: Path) -> None:
    """Class folders become sorted labels; a seeded hold-out is stratified and reproducible."""
    x, y = class_images(10, 3, shape=(16, 16, 3), seed=0)
    for i, (img, lbl) in enumerate(zip(x, y, strict=True)):
        d = tmp_path / "imgs" / ["cat", "ant", "bee"][lbl]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"im{i:03d}.png")
    src = {"kind": "image_folder", "root": str(tmp_path / "imgs"), "test_fraction": 0.2, "split_seed": 3}
    m1 = _ingest(src, tmp_path / "a")
    m2 = _ingest(src, tmp_path / "b")
    assert m1.classes == ["ant", "bee", "cat"]
    assert m1.counts["train"]["per_class"] == [8, 8, 8] and m1.counts["test"]["per_class"] == [2, 2, 2]
    assert m1.digest == m2.digest and m1.image_shape == [3, 16, 16]
    art = open_artifact(tmp_path / "a")
    row = art.rows("test")[0]
    rel = art.keys[row]
    assert rel.startswith("test_")


def test_image_folder_train_test_layout_and_resize(tmp_path: Path) -> None:
    """A train/ test/ layout keeps its splits; mixed sizes are resized when asked."""
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            d = tmp_path / "ds" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((20 + i, 24, 3), 40 * i, np.uint8)).save(d / f"{i}.jpg")
    meta = _ingest({"kind": "image_folder", "root": str(tmp_path / "ds"), "resize": [16, 16]}, tmp_path / "o")
    assert meta.counts["train"]["total"] == 8 and meta.counts["test"]["total"] == 4
    assert meta.image_shape == [3, 16, 16]


def test_cifar_batches_round_trip(tmp_path: Path) -> None:
    """CIFAR-10 python batches are read through the restricted unpickler, CHW rows -> HWC images."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, size=(6, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=6)]
        labels[:2] = [0, 9]
        batches[name] = (data, labels)
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    names = [f"c{i}".encode() for i in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    meta = _ingest({"kind": "cifar", "root": str(root)}, tmp_path / "o")
    assert meta.counts["train"]["total"] == 30 and meta.image_shape == [3, 32, 32] and meta.classes[3] == "c3"
    art = open_artifact(tmp_path / "o")
    first = art.read_arrays(art.rows("train")[:1])[0]
    np.testing.assert_array_equal(first, batches["data_batch_1"][0][0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_npz_round_trip_with_seeded_split(tmp_path: Path) -> None:
    """An .npz (x, y) ingests with a stratified seeded split and bit-exact pixels."""
    x, y = class_images(10, 4, shape=(8, 8), seed=5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    meta = _ingest({"kind": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 0.3}, tmp_path / "o")
    assert meta.counts["train"]["per_class"] == [7, 7, 7, 7] and meta.image_shape == [1, 8, 8]
    art = open_artifact(tmp_path / "o")
    rows = art.rows("train")
    got = art.read_arrays(rows)[..., 0]
    keys = [art.keys[r] for r in rows]
    assert len(set(keys)) == len(keys)
    assert set(map(bytes, got)) <= set(map(bytes, x))


def _write_shards(folder: Path, x: np.ndarray, y: np.ndarray, per_shard: int, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(y), per_shard):
        with wds.TarWriter(str(folder / f"src-{s // per_shard:04d}.tar"), encoder=False) as w:
            for i in range(s, min(s + per_shard, len(y))):
                sample = {"__key__": f"img{i:05d}", "png": encode_png(x[i]), "cls": str(int(y[i])).encode()}
                sample.update(extra or {})
                w.write(sample)


def test_webdataset_source_local_and_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards from a brace pattern and from a pipe: URL (with the DDFLOW_ALLOW_PIPE=1 opt-in) give the same
    artifact digest."""
    monkeypatch.setenv("DDFLOW_ALLOW_PIPE", "1")
    x, y = class_images(5, 3, shape=(12, 12, 3), seed=2)
    _write_shards(tmp_path / "src", x, y, per_shard=6)
    pattern = str(tmp_path / "src" / "src-{0000..0002}.tar")
    m1 = _ingest({"kind": "webdataset", "urls": {"train": pattern}}, tmp_path / "a")
    cat = f"pipe:cat {tmp_path / 'src'}/src-000{{0..2}}.tar"
    m2 = _ingest({"kind": "webdataset", "urls": {"train": cat}}, tmp_path / "b")
    assert m1.counts["train"]["total"] == 15 and m1.classes == ["0", "1", "2"]
    assert m1.digest == m2.digest


def test_artifact_on_fsspec_memory_filesystem(fake_fmnist: Path) -> None:
    """The same code writes and reads an artifact on a non-local fsspec filesystem (memory://)."""
    uri = "memory://ddflow-test/fm"
    meta = _ingest({"kind": "fashion_mnist", "root": str(fake_fmnist)}, uri)  # type: ignore[arg-type]
    art = open_artifact(uri, verify="full")
    assert art.digest == meta.digest and art.load_split("test")[0].shape == (40, 1, 28, 28)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_counts(tmp_path: Path) -> None:
    """Real Fashion-MNIST (first 50 per class): shape 1x28x28, ten classes, plausible pixel mean."""
    meta = _ingest({"kind": "fashion_mnist"}, tmp_path / "fm", max_per_class=50)
    assert meta.counts["train"]["per_class"] == [50] * 10 and meta.counts["test"]["per_class"] == [50] * 10
    assert 0.2 < meta.mean[0] < 0.4 and meta.classes[-1] == "Ankle boot"
