"""Indexing existing WebDataset shards: a dataset artifact over the user's shards, without decoding or re-encoding.

``layout: in_place`` writes only ``manifest.parquet`` and ``dataset.json``; the manifest points into the user's
shards (byte offset and size of each sample's image member, its sha256) and ``dataset.json`` records where they
are (``shard_root``) with each shard's size and sha256, so the verification rules of every artifact apply: a
quick open checks presence and sizes, a full one the shard hashes, and every read checks each sample's sha256.
``layout: copy`` writes the same manifest and copies the shard files, byte for byte, into the artifact folder.
The two give the same digest (same keys, labels, shard names and payload hashes).

One pass reads each shard once, sequentially (:func:`ddcore.data.tar_scan.scan_tar`); image sizes come from the
JPEG/PNG headers, and the normalisation statistics from at most :data:`STATS_IMAGES` train images spread over
the split, decoded after the pass.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import pyarrow.parquet as pq

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.data.codec import IMAGE_FIELDS, LABEL_FIELDS, SAFE_EXTRA, check_member_key, parse_label
from ddcore.data.meta import (
    KEY_RE,
    MANIFEST,
    MAX_CLASSES,
    METADATA,
    DatasetMeta,
    channel_stats,
    check_all_classes,
    manifest_digest,
    manifest_table,
    split_counts,
)
from ddcore.data.storage import disk_errors
from ddcore.data.tar_scan import HashingReader, Member, image_size, scan_tar, split_member
from ddcore.data.workers import in_workers
from ddcore.errors import ArtifactError, DataError

STATS_IMAGES = 512
"""Train images decoded for the channel mean/std (evenly spread over the split's manifest rows)."""
Progress = Callable[[int, int | None], None]


def expand_shards(urls: dict[str, str]) -> dict[str, list[str]]:
    """``{split: [shard url, ...]}`` with brace patterns expanded; refuses ``pipe:`` and a shard in two splits."""
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split, pattern in urls.items():
        if str(pattern).lstrip().lower().startswith("pipe:"):
            raise DataError(f"data.source.urls.{split} is a pipe: command, which has no file to index in place or "
                            "copy; use layout: reencode, or point urls at the shard files")
        out[split] = list(braceexpand.braceexpand(str(pattern)))
        for url in out[split]:
            if url in seen:
                raise DataError(f"shard {url} is listed for splits {seen[url]!r} and {split!r}; a shard belongs to "
                                "one split")
            seen[url] = split
    return out


def shard_root(urls: list[str]) -> tuple[str, list[str]]:
    """``(root, names)``: the deepest folder holding every shard, and each shard's path relative to it."""
    local = [not fsio.is_url(u) for u in urls]
    if all(local):
        full = [str(Path(u).expanduser().resolve()) for u in urls]
        root = os.path.commonpath([os.path.dirname(p) for p in full])
        return root, [os.path.relpath(p, root).replace(os.sep, "/") for p in full]
    if any(local):
        raise DataError("data.source.urls mixes local paths and URLs; index shards from one place")
    root = os.path.commonprefix([u.rsplit("/", 1)[0] + "/" for u in urls]).rsplit("/", 1)[0]
    return root, [u[len(root) + 1 :] for u in urls]


def _samples(members: Iterator[Member], where: str) -> Iterator[tuple[str, dict[str, Member]]]:
    """Group consecutive members into samples by webdataset's rule (``key.field``), checking every name."""
    key, fields = None, {}
    for m in members:
        parts = split_member(m.name)
        if parts is None:
            raise DataError(f"shard member {m.name!r} in {where} has no extension, so it belongs to no sample; name "
                            "members <key>.<field> (e.g. 000001.jpg, 000001.cls) or remove it")
        k, field = parts
        check_member_key(k, m.name, where)
        if field not in SAFE_EXTRA:
            raise DataError(f"refused shard member {m.name!r} in {where}: only {sorted(SAFE_EXTRA)} are read "
                            "(pickle-like members are never decoded)")
        if k != key and key is not None:
            yield key, fields
            fields = {}
        key = k
        fields[field] = m
    if key is not None:
        yield key, fields



@dataclass
class ShardScan:
    """What one pass over one shard found: manifest rows, the shard's record, and its image format and size."""

    rows: list[tuple]
    record: dict[str, Any]
    field: str | None = None
    hw: tuple[int, int] | None = None
    channels: int = 0


def scan_shard(split: str, url: str, name: str, copy_to: str | None = None) -> ShardScan:
    """Index one shard (reading it once), copying its bytes to ``copy_to/name`` when given.

    Every sample needs one image member of one format and size across the shard, and an integer label.
    """
    src_fs, path = fsio.get_fs(url)
    if not src_fs.exists(path):
        raise DataError(f"shard {url} not found; check data.source.urls (brace patterns like "
                        "train-{000000..000099}.tar expand to every shard)")
    with ExitStack() as stack:
        f = stack.enter_context(src_fs.open(path, "rb"))
        sink = None
        if copy_to is not None:
            out_fs, out_path = fsio.get_fs(copy_to)
            sink = stack.enter_context(fsio.open_write(out_fs, fsio.join(out_path, name)))
        reader = HashingReader(f, sink=sink)
        scan = ShardScan([], {})
        for i, (src_key, fields) in enumerate(_samples(scan_tar(reader, url), url)):
            img_field = next((f for f in IMAGE_FIELDS if f in fields), None)
            if img_field is None:
                raise DataError(f"sample {src_key!r} in {url} has no image member (one of {IMAGE_FIELDS})")
            img = fields[img_field]
            _check_image(scan, src_key, img_field, img.data, url)
            label = parse_label({f: fields[f].data for f in LABEL_FIELDS if f in fields},
                                f"sample {src_key!r} in {url}")
            if not 0 <= label < MAX_CLASSES:
                raise DataError(f"label {label} of sample {src_key!r} in {url} is out of range; fix the label")
            key = src_key if KEY_RE.match(src_key) else f"{split}_{Path(name).stem}_{i:08d}"
            sha = hashlib.sha256(img.data).hexdigest()
            scan.rows.append((key, split, label, name, sha, img.offset, len(img.data), None, None))
    scan.record = {"sha256": reader.sha.hexdigest(), "bytes": reader.pos, "count": len(scan.rows)}
    return scan


def _check_image(scan: ShardScan, key: str, field: str, data: bytes, where: str) -> None:
    """Record the first image's format, size and channels in ``scan``; refuse a later one that differs."""
    if scan.field is None:
        arr = codec.decode_png(data)
        scan.field, scan.hw, scan.channels = field, tuple(arr.shape[:2]), arr.shape[2]
    if field != scan.field:
        raise DataError(f"sample {key!r} in {where} is a {field} image, earlier ones {scan.field}; indexing in "
                        "place needs one image format (use layout: reencode to convert)")
    hw = image_size(data)
    if hw is None:
        hw = codec.decode_png(data).shape[:2]
    if tuple(hw) != scan.hw:
        raise DataError(f"image {key!r} in {where} is {hw[0]}x{hw[1]}, earlier ones {scan.hw[0]}x{scan.hw[1]}; "
                        "indexing in place needs one image size (use layout: reencode to resize)")


class _Merged:
    """The shards' scans merged in shard order: keys unique across shards, one image format and size."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.shards: dict[str, dict[str, Any]] = {}
        self.where: dict[str, str] = {}
        self.first: ShardScan | None = None

    def add(self, url: str, name: str, scan: ShardScan) -> None:
        first = self.first = self.first or (scan if scan.field else None)
        if first is not None and scan.field and (scan.field, scan.hw) != (first.field, first.hw):
            what = "format" if scan.field != first.field else "size"
            raise DataError(f"the images of {url} ({scan.field}, {scan.hw[0]}x{scan.hw[1]}) differ in {what} from "
                            f"earlier shards' ({first.field}, {first.hw[0]}x{first.hw[1]}); indexing in place needs "
                            "one image format and size (use layout: reencode to convert)")
        for row in scan.rows:
            if row[0] in self.where:
                raise DataError(f"sample key {row[0]!r} is in {self.where[row[0]]} and {url}; keys must be unique "
                                "across the shards (use layout: reencode to number the samples)")
            self.where[row[0]] = url
        self.rows += scan.rows
        self.shards[name] = scan.record


def index_shards(urls: dict[str, str], out: str | Path, *, layout: str, name: str, classes: list[str] | None,
                 source: dict[str, Any], overwrite: bool = False, progress: Progress | None = None,
                 workers: int = 1) -> DatasetMeta:
    """Index the shards of ``urls`` (``{split: url or brace pattern}``) into the artifact ``out``.

    Args:
        layout: ``"in_place"`` (the artifact points at the shards) or ``"copy"`` (they are copied into it).
        classes: class names; ``None``: ``"0"`` .. ``"K-1"`` from the largest label.
        source: provenance recorded in ``dataset.json``.
        workers: processes scanning shards at once (the artifact is the same for every count).

    Raises:
        DataError: a shard that is not a tar, a refused member, mixed image formats or sizes, a bad label.
        ArtifactError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    if layout not in ("in_place", "copy"):
        raise DataError(f"layout must be 'in_place' or 'copy' to index shards, got {layout!r}")
    by_split = expand_shards(urls)
    jobs = [(split, url) for split, us in by_split.items() for url in us]
    root, names = shard_root([url for _, url in jobs])
    fs, final = fsio.get_fs(out)
    if fs.exists(fsio.join(final, METADATA)) and not overwrite:
        raise ArtifactError(f"artifact already exists at {out}; pass --overwrite or choose another --out")
    if any(fsio.local_overlap(url, out) for _, url in jobs):  # publishing replaces out: it must hold no shard
        raise ArtifactError(f"--out {out} holds shards being indexed ({root}); choose an --out outside it")
    tmp = fsio.temp_sibling(fs, final)
    fs.makedirs(tmp, exist_ok=True)
    copy_to = fs.unstrip_protocol(tmp) if layout == "copy" else None
    merged = _Merged()
    try:
        with disk_errors(str(out)), in_workers(workers) as pool:
            scans = pool.map(scan_shard, *zip(*[(s, u, n, copy_to) for (s, u), n in zip(jobs, names, strict=True)],
                                             strict=True))
            for (_, url), shard_name, scan in zip(jobs, names, scans, strict=True):
                merged.add(url, shard_name, scan)
                if progress is not None:
                    progress(len(merged.rows), None)
            meta = _finish(merged, fs, tmp, root if layout == "in_place" else "", name=name, classes=classes,
                           source=source)
            fsio.publish(fs, tmp, final, marker=METADATA)
    except BaseException:
        fsio.remove_quietly(fs, tmp)
        raise
    return meta


def _finish(ix: _Merged, fs: Any, tmp: str, root: str, *, name: str, classes: list[str] | None,
            source: dict[str, Any]) -> DatasetMeta:
    if not ix.rows:
        raise DataError("the shards hold no samples; pass shards with at least one image and label")
    top = max(r[2] for r in ix.rows)
    classes = list(classes) if classes is not None else [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise DataError(f"label {top} is out of range for the {len(classes)} classes listed in data.source.classes; "
                        "fix the labels or the class list")
    counts = split_counts(ix.rows, len(classes))
    check_all_classes(counts, classes, "train")
    table = manifest_table(ix.rows)
    with fsio.open_write(fs, fsio.join(tmp, MANIFEST)) as f:
        pq.write_table(table, f)
    mean, std = _stats(ix, *(fsio.get_fs(root) if root else (fs, tmp)))
    first = ix.first
    assert first is not None and first.hw is not None and first.field is not None  # some shard held a sample
    meta = DatasetMeta(name=name, classes=classes, image_shape=[first.channels, *first.hw], mean=mean, std=std,
                       counts=counts, source=source, digest=manifest_digest(table), storage=first.field,
                       shards=dict(sorted(ix.shards.items())), shard_root=root)
    with fsio.open_write(fs, fsio.join(tmp, METADATA)) as f:
        f.write(meta.to_json().encode())
    return meta


def _stats(ix: _Merged, fs: Any, base: str) -> tuple[list[float], list[float]]:
    """Channel mean/std in [0, 1] pixel space over at most :data:`STATS_IMAGES` train images (all when fewer)."""
    train = [i for i, r in enumerate(ix.rows) if r[1] == "train"] or list(range(len(ix.rows)))
    pick = np.unique(np.linspace(0, len(train) - 1, min(STATS_IMAGES, len(train))).round().astype(np.int64))
    rows = np.asarray(train)[pick]
    cols = list(zip(*ix.rows, strict=True))
    counts = {n: int(s["count"]) for n, s in ix.shards.items()}
    payloads = fsio.read_checked_ranges(fs, base, rows, shards=cols[3], offsets=cols[5], sizes=cols[6],
                                        sha256=cols[4], shard_counts=counts)
    if any(data is None for data in payloads):
        raise DataError("a shard changed while it was being indexed; index again once it is complete")
    c = ix.first.channels if ix.first else 3
    pix = np.stack([codec.decode_png(d, channels=c) for d in payloads]).reshape(-1, c)
    sums = pix.sum(0, dtype=np.float64) / 255.0
    sq = np.einsum("nc,nc->c", pix, pix, dtype=np.float64) / 255.0**2
    return channel_stats(sums, sq, pix.shape[0])
