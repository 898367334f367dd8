"""Reading latent artifacts: the ``latents.json`` record (:class:`LatentMeta`), the manifest digest, and the
verified read-only view (:class:`LatentArtifact`, :func:`open_latents`, :func:`latents_by_class`).

The folder layout is described in :mod:`ddcore.latent.shards`, which writes these artifacts
(:func:`~ddcore.latent.shards.encode_dataset`). Every read checks each payload's sha256; ``npy`` payloads
are decoded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.errors import ArtifactError, DataError

FORMAT_VERSION = 1
LATENT_META = "latents.json"
MANIFEST = "manifest.parquet"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class LatentMeta:
    """Contents of ``latents.json``.

    Attributes:
        source: ``{"uri", "digest", "name", "split", "classes", "image_shape", "mean", "std"}`` of the
            encoded dataset artifact.
        vae_digest: identity of the VAE (folder digest when given, else a state-dict digest).
        latent_shape: ``[c, h, w]`` of one latent.
        dtype: ``"float16"`` or ``"float32"`` (storage dtype of the ``npy`` payloads).
        counts: ``{"total": n, "per_class": [n_0, ...]}``.
        shard_size, batch_size: how the split was cut into shards and encode batches.
        shards: ``{file name: {"sha256": hex, "bytes": n, "count": n}}``.
        digest: sha256 over the manifest (see :func:`latent_manifest_digest`).
        run: facts about the call that returned this object (``encoded`` samples, ``reused_shards``,
            ``seconds``); NOT written to ``latents.json`` (it would differ between a resumed and a
            fresh run).
    """

    source: dict[str, Any]
    vae_digest: str
    latent_shape: list[int]
    dtype: str
    counts: dict[str, Any]
    shard_size: int
    batch_size: int
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    digest: str = ""
    kind: str = "latents"
    format_version: int = FORMAT_VERSION
    run: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.source["classes"])

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("run")
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatentMeta:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__ if f != "run"}
        return cls(**{k: v for k, v in data.items() if k in known})


def latent_manifest_digest(keys: list[str], labels: list[int], shards: list[str], sha: list[str]) -> str:
    """sha256 over ``key,label,shard,sha256`` lines, in row order."""
    h = hashlib.sha256()
    for row in zip(keys, labels, shards, sha, strict=True):
        h.update((",".join(str(v) for v in row) + "\n").encode())
    return h.hexdigest()


class LatentArtifact:
    """A verified, read-only latent artifact; latents are read by byte offset and sha256-checked."""

    def __init__(self, uri: str, fs: Any, path: str, meta: LatentMeta, manifest: pa.Table) -> None:
        self.uri, self.fs, self.path, self.meta = uri, fs, path, meta
        cols = manifest.to_pydict()
        self.keys: list[str] = cols["key"]
        self.labels = np.asarray(cols["label"], dtype=np.int64)
        self.shards = np.asarray(cols["shard"], dtype=object)
        self.offsets = np.asarray(cols["offset"], dtype=np.int64)
        self.sizes = np.asarray(cols["size"], dtype=np.int64)
        self.sha: list[str] = cols["sha256"]

    @property
    def digest(self) -> str:
        return self.meta.digest

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.meta.latent_shape)

    def class_rows(self, c: int) -> np.ndarray:
        """Manifest rows of class ``c`` (int64 ``[n_c]``, stored order)."""
        if not 0 <= c < self.num_classes:
            raise DataError(f"class {c} out of range [0, {self.num_classes}) for latents at {self.uri}")
        return np.flatnonzero(self.labels == c)

    def shard_urls(self) -> list[str]:
        base = str(self.uri).rstrip("/")
        return [f"{base}/{n}" for n in sorted(self.meta.shards)]

    def read_raw(self, rows: np.ndarray) -> list[bytes]:
        """``npy`` payload bytes of ``rows``, each checked against its sha256."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = {name: int(info.get("count", 1) or 1) for name, info in self.meta.shards.items()}
        out = fsio.read_checked_ranges(self.fs, self.path, rows, shards=self.shards, offsets=self.offsets,
                                       sizes=self.sizes, sha256=self.sha, shard_counts=counts)
        for data, r in zip(out, rows, strict=True):
            if data is None:
                raise ArtifactError(f"latents at {self.uri}: sample {self.keys[r]} fails its sha256 check "
                                    "(truncated or altered shard); delete the folder and encode again")
        return out  # type: ignore[return-value]

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Latents of ``rows`` in the stored dtype: ``[n, c, h, w]``."""
        payloads = self.read_raw(rows)
        shape = tuple(self.meta.latent_shape)
        if not payloads:
            return torch.zeros((0, *shape), dtype=getattr(torch, self.meta.dtype))
        first = codec.decode_npy(payloads[0])
        if tuple(first.shape) != shape or first.dtype != DTYPES[self.meta.dtype]:
            raise ArtifactError(f"latents at {self.uri}: payload {first.dtype}{first.shape} does not match "
                                f"latents.json ({self.meta.dtype}{shape}); delete and encode again")
        hlen = len(payloads[0]) - first.nbytes
        head = payloads[0][:hlen]
        if all(len(p) == len(payloads[0]) and p[:hlen] == head for p in payloads):  # fast path: same header
            flat = np.frombuffer(b"".join(p[hlen:] for p in payloads), dtype=first.dtype)
            arr = flat.reshape(len(payloads), *shape).copy()
        else:
            arr = np.stack([codec.decode_npy(p) for p in payloads])
        return torch.from_numpy(arr)


def open_latents(uri: str | Path, *, verify: str = "quick") -> LatentArtifact:
    """Open and verify a latent artifact.

    Args:
        verify: ``"none"``; ``"quick"`` (manifest digest, shard presence and byte sizes); ``"full"``
            (also every shard's sha256). Each read also checks the payload's sha256.

    Raises:
        ArtifactError: missing, incomplete, truncated or altered artifact (one line, with the fix).
    """
    if verify not in ("none", "quick", "full"):
        raise ArtifactError(f"verify must be 'none', 'quick' or 'full', got {verify!r}")
    fs, path = fsio.get_fs(uri)
    meta_path = fsio.join(path, LATENT_META)
    if not fs.exists(meta_path):
        what = "no such folder" if not fs.exists(path) else "latents.json is missing (incomplete write?)"
        raise ArtifactError(f"no latent artifact at {uri}: {what}; run the encode stage to create it")
    try:
        meta = LatentMeta.from_json(fs.cat_file(meta_path).decode())
        manifest = pq.read_table(io.BytesIO(fs.cat_file(fsio.join(path, MANIFEST))))
        art = LatentArtifact(str(uri), fs, path, meta, manifest)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt artifact
        raise ArtifactError(f"latent artifact at {uri} is corrupt ({type(exc).__name__}); delete it and "
                            "encode again") from None
    if verify == "none":
        return art
    if latent_manifest_digest(art.keys, art.labels.tolist(), list(art.shards), art.sha) != meta.digest:
        raise ArtifactError(f"latent artifact at {uri} fails verification: manifest digest mismatch; "
                            "delete it and encode again")
    for name, info in meta.shards.items():
        p = fsio.join(path, name)
        if not fs.exists(p):
            raise ArtifactError(f"latent artifact at {uri} is missing shard {name}; delete it and encode again")
        size = int(fs.size(p))
        if size != int(info["bytes"]):
            raise ArtifactError(f"latent artifact at {uri}: shard {name} is truncated or altered ({size} bytes, "
                                f"expected {info['bytes']}); delete it and encode again")
        if verify == "full" and fsio.sha256_file(fs, p) != info["sha256"]:
            raise ArtifactError(f"latent artifact at {uri}: shard {name} sha256 mismatch; delete it and encode again")
    return art


def latents_by_class(
    art: LatentArtifact,
    c: int,
    batch_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Stream class ``c``'s latents in stored order as ``[b, c', h, w]`` batches of ``batch_size``
    (cast to ``dtype``, moved to ``device``); only one batch is in memory at a time.

    ``lambda c: latents_by_class(art, c, bs)`` is the ``latents_by_class`` callable
    :func:`ddcore.latent.ddoq.distill_ddoq` takes (each call starts a fresh pass).
    """
    if batch_size < 1:
        raise DataError("batch_size must be >= 1")
    rows = art.class_rows(c)
    for i in range(0, rows.size, batch_size):
        z = art.read(rows[i : i + batch_size]).to(dtype)
        yield z if device is None else z.to(device)
