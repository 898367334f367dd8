"""Reading a dataset artifact: verification, class index, random access by byte offset."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.data.meta import MANIFEST, METADATA, DatasetMeta, manifest_digest
from ddcore.errors import ArtifactError

VERIFY_LEVELS = ("none", "quick", "full")


class DatasetArtifact:
    """A verified, read-only dataset artifact.

    Open with :meth:`open`. Images are read by byte offset from the shards (no full decode), and
    every payload read is checked against its sha256 in the manifest.
    """

    def __init__(self, uri: str, fs: Any, path: str, meta: DatasetMeta, manifest: Any) -> None:
        self.uri, self.fs, self.path, self.meta = uri, fs, path, meta
        # where the shards are: this folder, or the user's shards an in-place artifact indexes
        self.shard_fs, self.shard_path = fsio.get_fs(meta.shard_root) if meta.in_place else (fs, path)
        cols = manifest.to_pydict()
        self.keys: list[str] = cols["key"]
        self.splits = np.asarray(cols["split"], dtype=object)
        self.labels = np.asarray(cols["label"], dtype=np.int64)
        self.shards = np.asarray(cols["shard"], dtype=object)
        self.sha = cols["sha256"]
        self.offsets = np.asarray(cols["offset"], dtype=np.int64)
        self.sizes = np.asarray(cols["size"], dtype=np.int64)
        self.soft_sha = cols.get("soft_sha256") or [None] * len(self.keys)
        w = cols.get("weight")
        self.weights = None if w is None or all(v is None for v in w) else np.asarray(
            [np.nan if v is None else v for v in w], dtype=np.float64
        )

    # -- opening and verification ----------------------------------------------------------
    @classmethod
    def open(cls, uri: str | Path, *, verify: str = "quick") -> DatasetArtifact:
        """Open and verify an artifact folder.

        Args:
            uri: artifact folder (local path or fsspec URL).
            verify: ``"none"``; ``"quick"`` (manifest digest, shard presence and sizes);
                ``"full"`` (also the sha256 of every shard).

        Raises:
            ArtifactError: missing, incomplete or corrupt artifact (one line, with the fix).
        """
        if verify not in VERIFY_LEVELS:
            raise ArtifactError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
        fs, path = fsio.get_fs(uri)
        meta_path = fsio.join(path, METADATA)
        try:
            present = fs.exists(meta_path)
            what = "" if present else "no such folder" if not fs.exists(path) else \
                "a file, not an artifact folder" if fs.isfile(path) else "dataset.json is missing (incomplete write?)"
            if what == "no such folder" and not fsio.is_local(fs):
                with contextlib.suppress(FileNotFoundError):
                    fs.ls(path)  # some filesystems (http) answer "absent" for a server they cannot reach: ask again
        except Exception as exc:  # noqa: BLE001 - a remote store that cannot be reached (network, credentials)
            raise ArtifactError(f"cannot read {uri} ({type(exc).__name__}: {exc}); check the URL, the network and "
                                "the credentials of that store") from None
        if what:
            raise ArtifactError(f"no dataset artifact at {uri}: {what}; run 'ddflow ingest' to create it")
        try:
            meta = DatasetMeta.from_json(fs.cat_file(meta_path).decode())
            manifest = pq.read_table(io.BytesIO(fs.cat_file(fsio.join(path, MANIFEST))))
        except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt artifact
            raise ArtifactError(
                f"artifact at {uri} is corrupt ({type(exc).__name__}); delete it and ingest again"
            ) from None
        art = cls(str(uri), fs, path, meta, manifest)
        if verify != "none":
            if manifest_digest(manifest) != meta.digest:
                raise ArtifactError(
                    f"artifact at {uri} fails verification: manifest digest mismatch; delete it and rebuild"
                )
            art._check_shards(full=verify == "full")
        return art

    def _check_shards(self, *, full: bool) -> None:
        fs = self.shard_fs
        fix = (f"restore the shards at {self.meta.shard_root} or index them again ('ddflow ingest ... --overwrite')"
               if self.meta.in_place else "delete it and rebuild")
        for name, info in self.meta.shards.items():
            p = fsio.join(self.shard_path, name)
            if not fs.exists(p):
                raise ArtifactError(f"artifact at {self.uri} is missing shard {name}; {fix}")
            if int(fs.size(p)) != int(info["bytes"]):
                raise ArtifactError(f"artifact at {self.uri}: shard {name} is truncated or altered ({fs.size(p)} "
                                    f"bytes, expected {info['bytes']}); {fix}")
            if full and fsio.sha256_file(fs, p) != info["sha256"]:
                raise ArtifactError(f"artifact at {self.uri}: shard {name} sha256 mismatch; {fix}")

    # -- indexing --------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        return self.meta.digest

    def rows(self, split: str) -> np.ndarray:
        """Manifest row indices of ``split`` (int64 ``[n]``), in stored order."""
        if split not in self.meta.counts:
            raise ArtifactError(f"split {split!r} not in artifact {self.uri}; it has {self.meta.splits}")
        return np.flatnonzero(self.splits == split)

    def class_rows(self, split: str) -> list[np.ndarray]:
        """Per-class manifest row indices of ``split``: ``out[c]`` is int64 ``[n_c]``."""
        rows = self.rows(split)
        labels = self.labels[rows]
        return [rows[labels == c] for c in range(self.meta.num_classes)]

    def shard_urls(self, split: str) -> list[str]:
        """URIs of the shards holding ``split``, in order."""
        names = sorted(set(self.shards[self.rows(split)].tolist()))
        base = (self.meta.shard_root or str(self.uri)).rstrip("/")
        return [f"{base}/{n}" for n in names]

    # -- reading ---------------------------------------------------------------------------
    def read_raw(self, rows: np.ndarray) -> list[bytes]:
        """Payload bytes of the primary field of ``rows``, checked against their sha256."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = {name: int(info.get("count", 1)) for name, info in self.meta.shards.items()}
        out = fsio.read_checked_ranges(self.shard_fs, self.shard_path, rows, shards=self.shards, offsets=self.offsets,
                                       sizes=self.sizes, sha256=self.sha, shard_counts=counts)
        for data, r in zip(out, rows, strict=True):
            if data is None:
                raise ArtifactError(
                    f"artifact at {self.uri}: sample {self.keys[r]} fails its sha256 check; delete and rebuild"
                )
        return out  # type: ignore[return-value]

    def read_arrays(self, rows: np.ndarray) -> np.ndarray:
        """Images of ``rows``: uint8 ``[n, H, W, C]`` (png or other encoded images) or float32 ``[n, C, H, W]``
        (npy)."""
        c, h, w = self.meta.image_shape
        payloads = self.read_raw(rows)
        if self.meta.storage == "npy":
            out = np.empty((len(payloads), c, h, w), np.float32)
            for i, p in enumerate(payloads):
                out[i] = codec.decode_npy(p)
            return out
        out8 = np.empty((len(payloads), h, w, c), np.uint8)
        for i, p in enumerate(payloads):
            out8[i] = codec.decode_png(p, channels=c)
        return out8

    def read_tensor(self, rows: np.ndarray) -> torch.Tensor:
        """Images of ``rows`` as float32 ``[n, C, H, W]`` in normalised space."""
        arr = self.read_arrays(rows)
        if self.meta.storage == "npy":
            return torch.from_numpy(arr)
        return normalize_uint8(arr, self.meta.mean, self.meta.std)

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole split: float32 ``[N, C, H, W]`` normalised images and int64 ``[N]`` labels."""
        rows = self.rows(split)
        return self.read_tensor(rows), torch.from_numpy(self.labels[rows].copy())

    def soft_labels(self, split: str) -> torch.Tensor | None:
        """float32 ``[N, K]`` soft labels of ``split`` when stored, else ``None``."""
        rows = self.rows(split)
        found: dict[str, np.ndarray] = {}
        for shard in sorted({self.shards[r] for r in rows}):
            with self.shard_fs.open(fsio.join(self.shard_path, shard), "rb") as f, tarfile.open(fileobj=f) as tar:
                for m in tar:
                    if m.name.endswith(".soft.npy"):
                        found[m.name[: -len(".soft.npy")]] = tar.extractfile(m).read()  # type: ignore[union-attr]
        if not found:
            return None
        arrays = []
        for r in rows:
            data = found.get(self.keys[r])
            if data is None or hashlib.sha256(data).hexdigest() != self.soft_sha[r]:
                raise ArtifactError(f"artifact at {self.uri}: soft label of {self.keys[r]} is missing or altered; "
                                    "delete and rebuild")
            arrays.append(codec.decode_npy(data))
        return torch.from_numpy(np.stack(arrays).astype(np.float32))


def normalize_uint8(arr: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 ``[n, H, W, C]`` -> float32 ``[n, C, H, W]`` with ``(x/255 - mean) / std``."""
    return normalize_pixels(torch.from_numpy(np.require(arr, requirements="W")), *channel_stats(mean, std))


def channel_stats(mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...],
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 ``[1, C, 1, 1]`` tensors on ``device`` (the arguments of
    :func:`normalize_pixels`)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return m.to(device), s.to(device)


def normalize_pixels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, H, W, C]`` on any device -> float32 ``[n, C, H, W]`` there, ``(x/255 - mean) / std`` with
    ``mean``/``std`` from :func:`channel_stats` on the same device."""
    return (x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0) - mean) / std


def open_artifact(uri: str | Path, *, verify: str = "quick") -> DatasetArtifact:
    """Shorthand for :meth:`DatasetArtifact.open`."""
    return DatasetArtifact.open(uri, verify=verify)
