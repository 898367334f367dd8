"""ImageFolder ingest of JPEGs: files kept byte for byte when they need no conversion, worker processes that
change nothing in the artifact, and re-encoding where a file cannot be kept (real JPEG/PNG files, real shards)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.imagenet_like import generate
from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.data.loader import stream


def _folder(tmp_path: Path) -> Path:
    generate(tmp_path / "g", classes=3, per_class=5, val_per_class=2, size=24, formats=("folder",))
    return tmp_path / "g"


def test_jpegs_are_kept_byte_for_byte_and_workers_change_nothing(tmp_path: Path) -> None:
    """Every sample of a JPEG ImageFolder reads back as its file's bytes; 2 worker processes give the same digest
    and dataset.json as 1; keep_jpeg: false re-encodes every image as PNG with the same pixels."""
    root = _folder(tmp_path)
    src = {"kind": "image_folder", "root": str(root)}
    one = ingest(IngestConfig.from_mapping({"source": src}), tmp_path / "one")
    two = ingest(IngestConfig.from_mapping({"source": src, "workers": 2}), tmp_path / "two")
    png = ingest(IngestConfig.from_mapping({"source": {**src, "keep_jpeg": False}}), tmp_path / "png")
    assert one.storage == "jpg" and png.storage == "png" and one.digest != png.digest
    assert one.digest == two.digest and one.to_json() == two.to_json()
    art = open_artifact(tmp_path / "one", verify="full")
    files = sorted(root.glob("train/*/*.JPEG")) + sorted(root.glob("val/*/*.JPEG"))
    assert art.read_raw(np.arange(len(art.keys))) == [f.read_bytes() for f in files]
    as_png = open_artifact(tmp_path / "png")
    assert np.array_equal(art.read_arrays(np.arange(4)), as_png.read_arrays(np.arange(4)))


def test_a_file_that_needs_conversion_is_stored_as_png_beside_kept_jpegs(tmp_path: Path) -> None:
    """A greyscale JPEG in an RGB folder and a PNG file are converted and stored as png members; the stream reads
    both kinds of member (each sample through the image field it has)."""
    root = _folder(tmp_path)
    victim = sorted(root.glob("train/n00000001/*.JPEG"))[0]
    Image.open(victim).convert("L").save(victim, "JPEG")
    Image.open(sorted(root.glob("train/n00000002/*.JPEG"))[0]).save(root / "train" / "n00000002" / "extra.png")
    meta = ingest(IngestConfig.from_mapping({"source": {"kind": "image_folder", "root": str(root)}}), tmp_path / "a")
    art = open_artifact(tmp_path / "a")
    kept = [r[:2] == b"\xff\xd8" for r in art.read_raw(np.arange(len(art.keys)))]
    assert meta.storage == "jpg" and kept.count(False) == 2 and meta.counts["train"]["total"] == 16
    grey = art.read_arrays(np.array([art.keys.index("train_00001_0000000")]))[0]
    assert np.array_equal(grey[..., 0], grey[..., 1])  # converted to RGB from one channel
    got = {k: int(y) for _, ys, keys in stream(art, "train", batch_size=4) for k, y in zip(keys, ys, strict=True)}
    assert got == {k: int(c) for k, c, s in zip(art.keys, art.labels, art.splits, strict=True) if s == "train"}
    assert Image.open(io.BytesIO(art.read_raw(np.array([0]))[0])).format == "JPEG"
