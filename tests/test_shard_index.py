"""Existing WebDataset shards indexed in place (and copied verbatim): byte-identical reads, one digest for both
layouts, verification that catches a tampered shard, and one clear line for shards that cannot be indexed.

The shards are ImageNet-shaped JPEG shards from ``benchmarks.imagenet_like`` (real tar files, real JPEG bytes)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.imagenet_like import generate, render
from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.data.loader import ArtifactSampler, stream
from ddcore.data.tar_scan import HashingReader, image_size, scan_tar
from ddcore.errors import ArtifactError, DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_like")
    generate(root, classes=4, per_class=6, val_per_class=2, size=32, shard_size=5, formats=("wds",))
    return root / "shards"


def _urls(d: Path) -> dict[str, str]:
    return {"train": str(d / "imagenet1k-train-{000000..000004}.tar"),
            "test": str(d / "imagenet1k-val-{000000..000001}.tar")}


def _index(urls: dict[str, str], out: Path, layout: str = "in_place"):
    return ingest(IngestConfig.from_mapping({"source": {"kind": "webdataset", "urls": urls, "layout": layout}}), out)


def _members(d: Path, field: str) -> dict[str, bytes]:
    out = {}
    for p in sorted(d.glob("*.tar")):
        with tarfile.open(p) as t:
            out.update({m.name.rsplit(".", 1)[0]: t.extractfile(m).read() for m in t if m.name.endswith(field)})
    return out


def test_in_place_reads_back_the_shard_bytes_and_copy_gives_the_same_digest(shards: Path, tmp_path: Path) -> None:
    """Every sample read through an in-place artifact is byte-identical to its tar member; the artifact holds no
    shard; indexing with layout copy gives the same digest and the same bytes from its own copies."""
    meta = _index(_urls(shards), tmp_path / "in_place")
    copied = _index(_urls(shards), tmp_path / "copy", layout="copy")
    assert meta.digest == copied.digest
    assert sorted(p.name for p in (tmp_path / "in_place").iterdir()) == ["dataset.json", "manifest.parquet"]
    assert meta.in_place and not copied.in_place and meta.storage == "jpg" and meta.image_shape == [3, 32, 32]
    jpgs, labels = _members(shards, ".jpg"), _members(shards, ".cls")
    for where in ("in_place", "copy"):
        art = open_artifact(tmp_path / where, verify="full")
        rows = np.arange(len(art.keys))
        assert art.read_raw(rows) == [jpgs[k] for k in art.keys]
        assert art.labels.tolist() == [int(labels[k]) for k in art.keys]
    assert meta.counts["train"]["per_class"] == [6] * 4 and meta.counts["test"]["total"] == 8


def test_stream_and_sampler_of_an_in_place_artifact_decode_the_jpeg_pixels(shards: Path, tmp_path: Path) -> None:
    """The training stream yields every train sample once with its label, and the sampler the same pixels as PIL."""
    _index(_urls(shards), tmp_path / "a")
    art = open_artifact(tmp_path / "a")
    seen = {}
    for x, y, keys in stream(art, "train", batch_size=7, num_workers=2):
        assert x.shape[1:] == (3, 32, 32)
        seen.update(zip(keys, y.tolist(), strict=True))
    assert seen == {k: int(c) for k, c in zip(art.keys, art.labels, strict=True) if k.startswith("n0")}
    first = ArtifactSampler(art, "train").artifact.read_arrays(np.array([0]))[0]
    assert np.array_equal(first, np.asarray(Image.open(io.BytesIO(_members(shards, ".jpg")[art.keys[0]]))))
    # the JPEG is lossy, but close to the image the generator rendered
    c, i = int(art.labels[0]), int(art.keys[0].rsplit("_", 1)[1])
    assert np.abs(first.astype(int) - render(0, "train", c, i, 32).astype(int)).mean() < 12


def _tamper(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_shard_is_caught_by_full_verification_and_by_the_sample_hash(shards: Path, tmp_path: Path) -> None:
    """A byte flipped inside a JPEG member keeps the shard's size: quick verification passes, full verification
    names the shard, and reading that sample fails its sha256; a truncated shard fails quick verification."""
    own = tmp_path / "shards"
    own.mkdir()
    for p in shards.glob("*.tar"):
        (own / p.name).write_bytes(p.read_bytes())
    _index(_urls(own), tmp_path / "a")
    art = open_artifact(tmp_path / "a")
    victim = own / art.shards[0]
    _tamper(victim, int(art.offsets[0]) + 100)
    open_artifact(tmp_path / "a", verify="quick")
    with pytest.raises(ArtifactError, match=rf"shard {art.shards[0]} sha256 mismatch; restore the shards"):
        open_artifact(tmp_path / "a", verify="full")
    with pytest.raises(ArtifactError, match="fails its sha256 check"):
        art.read_raw(np.array([0]))
    victim.write_bytes(victim.read_bytes()[:-1024])
    with pytest.raises(ArtifactError, match="truncated or altered"):
        open_artifact(tmp_path / "a", verify="quick")


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _jpeg(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(("members", "message"), [
    ([("a.jpg", b""), ("a.cls", b"0"), ("a.pyd", b"\x80\x04K\x01.")], "refused shard member 'a.pyd'"),
    ([("a.jpg", "J"), ("a.cls", b"0"), ("b.jpg", "J2"), ("b.cls", b"0")], "is 8x8, earlier ones 8x9"),
    ([("a.jpg", "J"), ("a.cls", b"0"), ("b.png", "P"), ("b.cls", b"0")], "is a png image, earlier ones jpg"),
    ([("a.jpg", "J"), ("a.cls", b"x")], "label 'x' is not an integer"),
    ([("a.jpg", "J")], "has no 'cls' label member"),
    ([("a.jpg", "J"), ("a.cls", b"0"), ("README", b"hi")], "has no extension"),
    ([("../a.jpg", "J"), ("../a.cls", b"0")], "path traversal"),
], ids=["pickle", "sizes", "formats", "label", "no-label", "no-extension", "traversal"])
def test_shards_that_cannot_be_indexed_fail_with_one_line(tmp_path: Path, members: list, message: str) -> None:
    """Each refusal is a DataError naming the member or sample and the fix, and leaves no artifact behind."""
    png = io.BytesIO()
    Image.new("RGB", (9, 8)).save(png, "PNG")
    payload = {"J": _jpeg(8, 9), "J2": _jpeg(8, 8), "P": png.getvalue()}
    real = [(n, payload.get(d, d) if isinstance(d, str) else d) for n, d in members]
    if real[0][1] == b"":
        real[0] = (real[0][0], payload["J"])
    shard = _tar(tmp_path / "s.tar", real)
    with pytest.raises(DataError, match=message) as err:
        _index({"train": str(shard)}, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_refusals_of_the_url_list(tmp_path: Path, shards: Path) -> None:
    """A pipe: URL, a shard listed for two splits, a missing shard, an empty file, keys repeated across shards: one
    line each."""
    one = str(shards / "imagenet1k-train-000000.tar")
    (tmp_path / "empty.tar").write_bytes(b"")
    for urls, message in [({"train": "pipe:cat x.tar"}, "pipe: command"),
                          ({"train": one, "test": one}, "listed for splits"),
                          ({"train": str(tmp_path / "nope.tar")}, "not found"),
                          ({"train": one, "test": str(tmp_path / "empty.tar")}, "is empty")]:
        with pytest.raises(DataError, match=message):
            _index(urls, tmp_path / "out")
    copy = tmp_path / "again.tar"
    copy.write_bytes(Path(one).read_bytes())
    with pytest.raises(DataError, match="keys must be unique"):
        _index({"train": one, "test": str(copy)}, tmp_path / "out")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_scan_tar_agrees_with_tarfile_on_offsets_names_and_whole_file_hash(tmp_path: Path, fmt: int) -> None:
    """For tars written in every format Python writes (long names included), the scanner reports the names, data
    offsets and bytes tarfile reports, and hashes the whole file."""
    import hashlib

    rng = np.random.default_rng(fmt)
    long = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "d" * 60
    members = [(f"{long}/k{i}.{'jpg' if i % 2 else 'cls'}", rng.bytes(int(rng.integers(0, 3000)))) for i in range(9)]
    path = _tar(tmp_path / "t.tar", members, fmt)
    with path.open("rb") as f:
        reader = HashingReader(f)
        got = [(m.name, m.offset, m.data) for m in scan_tar(reader, str(path))]
    with tarfile.open(path) as t:
        want = [(m.name, m.offset_data, t.extractfile(m).read()) for m in t]
    assert got == want
    assert reader.sha.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_scan_tar_refuses_a_corrupt_header_and_a_link(tmp_path: Path) -> None:
    """A flipped header byte fails the checksum; a symlink member is refused (regular files only)."""
    path = _tar(tmp_path / "t.tar", [("a.cls", b"1")])
    _tamper(path, 10)
    with path.open("rb") as f, pytest.raises(DataError, match="header checksum mismatch"):
        list(scan_tar(HashingReader(f), "t.tar"))
    with tarfile.open(tmp_path / "l.tar", "w") as t:
        info = tarfile.TarInfo("a.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with (tmp_path / "l.tar").open("rb") as f, pytest.raises(DataError, match="link or special file"):
        list(scan_tar(HashingReader(f), "l.tar"))


@pytest.mark.parametrize("seed", range(4))
def test_image_size_from_headers_matches_pil(seed: int) -> None:
    """JPEG (baseline and progressive) and PNG sizes read from the header equal PIL's."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 300, size=2))
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    for fmt, kw in (("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        assert image_size(buf.getvalue()) == (h, w)
    assert image_size(b"GIF89a....") is None


def test_worker_processes_write_the_same_artifact(shards: Path, tmp_path: Path) -> None:
    """Indexing with 2 worker processes gives the same manifest bytes' digest and dataset.json as with 1; the
    worker count is no part of the ingest config's identity (stage key)."""
    one = IngestConfig.from_mapping({"source": {"kind": "webdataset", "urls": _urls(shards), "layout": "in_place"}})
    two = IngestConfig.from_mapping({**one.model_dump(), "workers": 2})
    assert two.workers == 2 and one.digest() == two.digest()
    a, b = ingest(one, tmp_path / "a"), ingest(two, tmp_path / "b")
    assert a.digest == b.digest and a.to_json() == b.to_json()
