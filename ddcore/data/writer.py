"""Writing a dataset artifact: WebDataset shards per split, manifest, metadata, atomic publish."""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections import defaultdict
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.data.meta import (
    KEY_RE,
    MANIFEST,
    METADATA,
    DatasetMeta,
    channel_stats,
    check_all_classes,
    manifest_digest,
    manifest_table,
    split_counts,
)
from ddcore.data.storage import disk_errors
from ddcore.errors import ArtifactError, DataError

BLOCK = 512
DEFAULT_SHARD_SIZE = 5000


def check_key(key: str) -> str:
    """Keys are flat names: letters, digits, '_' and '-' only (no dots, separators or '..')."""
    if not KEY_RE.match(key):
        raise DataError(
            f"sample key {key!r} is not allowed: use 1-80 letters, digits, '_' or '-' "
            "(no dots or path separators)"
        )
    return key


class ArtifactWriter:
    """Stream samples into a new dataset artifact folder and publish it atomically.

    Use as a context manager: on any exception the temporary folder is removed and nothing is left
    at ``out``. Samples of each split go to shards ``{split}-{n:06d}.tar`` of ``shard_size`` samples.

    Args:
        out: destination folder (local path or fsspec URL); must not exist unless ``overwrite``.
        name: dataset name.
        classes: class names (label = index).
        image_shape: ``(C, H, W)`` every image must have.
        source: provenance mapping recorded in ``dataset.json``.
        storage: ``"png"`` (uint8 images) or ``"npy"`` (float32 normalised images + png preview).
        mean, std: required for ``"npy"`` storage (the normalisation the floats are in).
    """

    def __init__(
        self,
        out: str | Path,
        *,
        name: str,
        classes: list[str],
        image_shape: tuple[int, int, int],
        source: dict[str, Any],
        shard_size: int = DEFAULT_SHARD_SIZE,
        storage: str = "png",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if shard_size < 1:
            raise DataError("shard_size must be >= 1")
        if storage not in ("png", "npy"):
            raise DataError(f"storage must be 'png' or 'npy', got {storage!r}")
        if storage == "npy" and (mean is None or std is None):
            raise DataError("npy storage needs the mean/std the float images are normalised with")
        if not classes:
            raise DataError("a dataset needs at least one class")
        self.fs, self.final = fsio.get_fs(out)
        if self.fs.exists(fsio.join(self.final, METADATA)) and not overwrite:
            raise ArtifactError(f"artifact already exists at {out}; pass --overwrite or choose another --out")
        if self.fs.isdir(self.final) and self.fs.ls(self.final) and not self.fs.exists(fsio.join(self.final, METADATA)):
            raise ArtifactError(f"--out {out} is a folder that is not a dataset artifact and publishing would delete "
                                "its contents; choose another --out")
        self.name, self.classes, self.image_shape = name, list(classes), tuple(int(v) for v in image_shape)
        self.source, self.shard_size, self.storage = source, shard_size, storage
        self.fixed_mean, self.fixed_std, self.extra = mean, std, extra or {}
        self.tmp = fsio.temp_sibling(self.fs, self.final)
        self.fs.makedirs(self.tmp, exist_ok=True)
        self._open: dict[str, tuple[Any, Any, str]] = {}
        self._shard_no: dict[str, int] = defaultdict(int)
        self._in_shard: dict[str, int] = defaultdict(int)
        self._rows: dict[str, list] = defaultdict(list)
        self._shard_names: list[str] = []
        self._keys: set[str] = set()
        c = self.image_shape[0]
        self._sums, self._sq = np.zeros(c), np.zeros(c)
        self._npix = 0
        self._stats_split: str | None = None
        self._offsets: dict[tuple[str, str], tuple[int, int]] = {}
        self._fields: set[str] = set()  # image fields written (png, and jpg where JPEG bytes were kept)
        self._done = False

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    def abort(self) -> None:
        """Close open shards and delete the temporary folder."""
        for sink, fobj, _ in self._open.values():
            for closable in (sink, fobj):
                with suppress(Exception):  # best effort cleanup (e.g. the disk is full)
                    closable.close()
        self._open.clear()
        fsio.remove_quietly(self.fs, self.tmp)

    # -- writing ---------------------------------------------------------------------------
    def add(
        self,
        split: str,
        key: str,
        image: np.ndarray,
        label: int,
        *,
        meta: dict[str, Any] | None = None,
        weight: float | None = None,
        soft: np.ndarray | None = None,
        encoded: tuple[str, bytes] | None = None,
    ) -> None:
        """Append one sample.

        Args:
            split: split name (``train``, ``test``...).
            key: unique flat key (see :func:`check_key`).
            image: uint8 ``[H, W, C]`` for png storage; float32 ``[C, H, W]`` for npy storage.
            label: class index.
            meta: JSON-serialisable per-sample metadata.
            weight: optional per-sample weight.
            soft: optional float32 ``[num_classes]`` soft label.
            encoded: ``(field, bytes)``: the image's original encoding (e.g. ``("jpg", <JPEG bytes>)``), stored as
                is instead of a PNG of ``image`` (png storage only; ``image`` must be what the bytes decode to).
        """
        check_key(key)
        if key in self._keys:
            raise DataError(f"duplicate sample key {key!r}; keys must be unique across splits")
        if not re.match(r"^[a-z][a-z0-9]*$", split):
            raise DataError(f"split name {split!r} must be lowercase letters and digits")
        label = int(label)
        if not 0 <= label < len(self.classes):
            raise DataError(
                f"label {label} of sample {key!r} is out of range [0, {len(self.classes)}); "
                "fix the labels or the class list"
            )
        sample: dict[str, Any] = {"__key__": key, "cls": str(label).encode()}
        c, h, w = self.image_shape
        if self.storage == "png":
            if image.ndim == 2:
                image = image[:, :, None]
            if image.dtype != np.uint8 or image.shape != (h, w, c):
                raise DataError(
                    f"image {key!r} has shape {tuple(image.shape)} {image.dtype}, expected ({h}, {w}, {c}) "
                    "uint8; resize/convert the source images to one shape"
                )
            field, payload = encoded if encoded is not None else ("png", codec.encode_png(image))
            if field not in codec.IMAGE_FIELDS:
                raise DataError(f"image field {field!r} of {key!r} is not one of {codec.IMAGE_FIELDS}")
            sample[field] = payload
            self._fields.add(field)
            pix = image.reshape(-1, c).astype(np.float64) / 255.0
        else:
            if image.dtype != np.float32 or image.shape != (c, h, w):
                raise DataError(f"float image {key!r} must be float32 {(c, h, w)}, got {image.shape}")
            if not np.isfinite(image).all():
                raise DataError(f"float image {key!r} contains NaN or Inf")
            payload = codec.encode_npy(image)
            sample["npy"] = payload
            m = np.asarray(self.fixed_mean, np.float32).reshape(-1, 1, 1)
            s = np.asarray(self.fixed_std, np.float32).reshape(-1, 1, 1)
            pix01 = np.clip(image * s + m, 0.0, 1.0)
            sample["png"] = codec.encode_png((pix01.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))
            pix = pix01.transpose(1, 2, 0).reshape(-1, c).astype(np.float64)
        record = dict(meta or {})
        if weight is not None:
            record["weight"] = float(weight)
        sample["json"] = codec.encode_json(record)
        soft_sha = None
        if soft is not None:
            sample["soft.npy"] = codec.encode_npy(np.asarray(soft, np.float32))
            soft_sha = hashlib.sha256(sample["soft.npy"]).hexdigest()
        if self._stats_split is None or split == "train":
            if self._stats_split != split:
                self._stats_split = split
                self._sums[:], self._sq[:], self._npix = 0.0, 0.0, 0
            if split == self._stats_split:
                self._sums += pix.sum(0)
                self._sq += (pix**2).sum(0)
                self._npix += pix.shape[0]
        with disk_errors(self._where(split)):
            shard = self._sink(split)
            tar = shard[0].tarstream
            start = tar.offset
            shard[0].write(sample)
        self._record_offset(shard[2], key, sample, start, tar.offset)
        self._keys.add(key)
        self._rows[split].append(
            (key, split, label, shard[2], hashlib.sha256(payload).hexdigest(), weight, soft_sha)
        )
        self._in_shard[split] += 1
        if self._in_shard[split] >= self.shard_size:
            with disk_errors(self._where(split)):
                self._close(split)

    def _where(self, split: str) -> str:
        name = self._open[split][2] if split in self._open else f"{split}-{self._shard_no[split]:06d}.tar"
        return f"{self.final} ({name})"

    def _sink(self, split: str) -> tuple[Any, Any, str]:
        if split not in self._open:
            name = f"{split}-{self._shard_no[split]:06d}.tar"
            self._shard_no[split] += 1
            fobj = fsio.open_write(self.fs, fsio.join(self.tmp, name))
            sink = wds.TarWriter(fobj, encoder=False, mtime=0, user="ddflow", group="ddflow", mode=0o444)
            # webdataset does not forward `format` to tarfile; plain USTAR gives fixed 512-byte headers
            sink.tarstream.format = tarfile.USTAR_FORMAT
            self._open[split] = (sink, fobj, name)
            self._in_shard[split] = 0
        return self._open[split]

    def _close(self, split: str) -> None:
        sink, fobj, name = self._open.pop(split)
        try:
            sink.close()
        finally:
            fobj.close()
        self._shard_names.append(name)

    # -- publishing ------------------------------------------------------------------------
    def commit(self, *, require_all_classes: str | None = "train") -> DatasetMeta:
        """Finish shards, write manifest and ``dataset.json``, and move the folder into place.

        Args:
            require_all_classes: a split in which every class must have at least one sample
                (``None`` disables the check).
        """
        with disk_errors(self.final):
            return self._commit(require_all_classes)

    def _commit(self, require_all_classes: str | None) -> DatasetMeta:
        for split in list(self._open):
            self._close(split)
        if not self._rows:
            raise DataError("no samples were written; the source is empty")
        counts = split_counts([r for rows in self._rows.values() for r in rows], len(self.classes))
        check_all_classes(counts, self.classes, require_all_classes)
        offsets = self._offsets
        rows = [(*r[:5], *offsets[(r[3], r[0])], *r[5:])
                for split in sorted(self._rows, key=_split_order) for r in self._rows[split]]
        table = manifest_table(rows)
        with fsio.open_write(self.fs, fsio.join(self.tmp, MANIFEST)) as f:
            pq.write_table(table, f)
        if self.storage == "npy":
            mean, std = list(self.fixed_mean or []), list(self.fixed_std or [])
        else:
            mean, std = channel_stats(self._sums, self._sq, self._npix)
        shards = {
            name: {
                "sha256": fsio.sha256_file(self.fs, fsio.join(self.tmp, name)),
                "bytes": int(self.fs.size(fsio.join(self.tmp, name))),
                "count": sum(1 for r in rows if r[3] == name),
            }
            for name in sorted(self._shard_names)
        }
        meta = DatasetMeta(
            name=self.name,
            classes=self.classes,
            image_shape=list(self.image_shape),
            mean=mean,
            std=std,
            counts=counts,
            source=self.source,
            digest=manifest_digest(table),
            storage=self.storage if self._fields <= {"png"} else "jpg",
            shards=shards,
            extra=self.extra,
        )
        with fsio.open_write(self.fs, fsio.join(self.tmp, METADATA)) as f:
            f.write(meta.to_json().encode())
        fsio.publish(self.fs, self.tmp, self.final, marker=METADATA)
        self._done = True
        return meta

    def _record_offset(self, shard: str, key: str, sample: dict[str, Any], start: int, end: int) -> None:
        """Remember where the primary field's bytes sit in the tar (members are written sorted)."""
        primary = "npy" if self.storage == "npy" else next(f for f in codec.IMAGE_FIELDS if f in sample)
        pos = start
        for field in sorted(k for k in sample if k != "__key__"):
            size = len(sample[field])
            if field == primary:
                self._offsets[(shard, key)] = (pos + BLOCK, size)
            pos += BLOCK + -(-size // BLOCK) * BLOCK
        if pos != end:  # would mean non-USTAR headers; never silently record wrong offsets
            raise ArtifactError(f"unexpected tar layout while writing {shard}; cannot index {key}")


def _split_order(split: str) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(split, 3), split)
