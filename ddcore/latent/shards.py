"""Writing latent artifacts: a dataset split encoded by a VAE into WebDataset shards (:func:`encode_dataset`).

The ``latents.json`` record (:class:`LatentMeta`) and reading back by byte offset (:class:`LatentArtifact`,
:func:`open_latents`, :func:`latents_by_class`) live in :mod:`ddcore.latent.reader`; they are re-exported
here so older imports keep working.

Layout of a latent artifact folder:

- ``latents-000000.tar``, ...: WebDataset shards; a sample is ``__key__`` (the SAME key as the source
  dataset's manifest row), ``cls`` (label, ASCII) and ``npy`` (the latent ``[c, h, w]`` in ``float16``
  or ``float32``, read with ``allow_pickle=False``).
- ``manifest.parquet``: key, label, shard, byte offset and size of the ``npy`` payload, its sha256.
- ``latents.json``: source dataset (uri, digest, split, classes, mean/std), VAE digest, latent shape,
  dtype, counts, shard sha256s and the **digest** (sha256 over the manifest's key/label/shard/sha256
  rows); written last, it is the completion marker.

Encoding (:func:`encode_dataset`) is deterministic and resumable per shard: shard ``i`` holds split rows
``[i * shard_size, (i + 1) * shard_size)`` in manifest order, encoded in ``batch_size`` chunks inside the
shard. Each finished shard goes to a temporary name and is renamed, then a small sidecar
``latents-000000.json`` (its rows, size, sha256 and the run identity) is written the same way. A restart
with the same source, VAE, split, dtype, shard and batch size, and VAE device/dtype skips every shard whose
sidecar and file still match, so an interrupted and an uninterrupted run give the same digest. Partial
shards live in a work folder (``work_dir/latents-partial``, default the hidden sibling ``.<name>.partial``);
the finished folder is assembled under a temporary sibling and renamed into place
(:func:`ddcore.data.storage.publish`). Two processes must not encode into the same work folder at once
(the orchestration layer holds a per-stage lock).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact
from ddcore.errors import ArtifactError, DataError
from ddcore.latent.reader import (
    DTYPES,
    FORMAT_VERSION,
    LATENT_META,
    MANIFEST,
    LatentArtifact,  # noqa: F401 - re-exported; import it from ddcore.latent.reader
    LatentMeta,
    latent_manifest_digest,
    latents_by_class,  # noqa: F401 - re-exported; import it from ddcore.latent.reader
    open_latents,
)
from ddcore.latent.vae import encode

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

__all__ = [
    "BLOCK", "DTYPES", "FORMAT_VERSION", "LATENT_META", "MANIFEST", "PARTIAL", "LatentArtifact", "LatentMeta",
    "Progress", "encode_dataset", "latent_manifest_digest", "latents_by_class", "module_digest", "open_latents",
    "pixel_batch",
]

PARTIAL = "latents-partial"
BLOCK = 512
Progress = Callable[[int, int], None]
"""``progress(samples_done, samples_total)``, called after each finished (or reused) shard."""


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes) and its diffusers config."""
    h = hashlib.sha256()
    conf = getattr(module, "config", None)
    if conf is not None:
        h.update(json.dumps(dict(conf), sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pixel_batch(artifact: DatasetArtifact, rows: np.ndarray) -> torch.Tensor:
    """Images of ``rows`` in pixel space: ``read_tensor`` (normalised) mapped back with the artifact's
    mean/std, float32 ``[n, C, H, W]`` (the same mapping the VAE sees during training)."""
    x = artifact.read_tensor(rows)
    m = torch.tensor(artifact.meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(artifact.meta.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x * s + m


# ----------------------------------------------------------------------------- writing
def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> int:
    """Append one member; returns the byte offset of its data inside the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444
    info.uname = info.gname = "ddflow"
    start = tar.offset
    tar.addfile(info, io.BytesIO(payload))
    if tar.offset != start + BLOCK + -(-len(payload) // BLOCK) * BLOCK:  # never record wrong offsets
        raise ArtifactError(f"unexpected tar layout while writing member {name}; cannot index it")
    return start + BLOCK


def _write_atomic(fs: Any, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with fsio.open_write(fs, tmp) as f:
        f.write(data)
    fs.mv(tmp, path)


def _shard_bytes(keys: list[str], labels: list[int], z: np.ndarray) -> tuple[bytes, list[tuple[int, int, str]]]:
    """A USTAR tar of ``key.cls`` + ``key.npy`` members; returns the bytes and per-row (offset, size, sha)."""
    buf = io.BytesIO()
    rows = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, lab, arr in zip(keys, labels, z, strict=True):
            _tar_member(tar, f"{key}.cls", str(int(lab)).encode())
            payload = codec.encode_npy(arr)
            off = _tar_member(tar, f"{key}.npy", payload)
            rows.append((off, len(payload), hashlib.sha256(payload).hexdigest()))
    return buf.getvalue(), rows


def _run_identity(artifact: DatasetArtifact, vae: AutoencoderKL, *, split: str, dtype: str, shard_size: int,
                  batch_size: int, vae_digest: str) -> dict[str, Any]:
    p = next(vae.parameters())
    return {"source_digest": artifact.digest, "split": split, "vae_digest": vae_digest, "dtype": dtype,
            "shard_size": shard_size, "batch_size": batch_size, "format_version": FORMAT_VERSION,
            "vae_device": p.device.type, "vae_dtype": str(p.dtype).replace("torch.", "")}


def _sidecar_ok(fs: Any, work: str, name: str, run: dict[str, Any], keys: list[str]) -> dict[str, Any] | None:
    side, shard = fsio.join(work, name + ".json"), fsio.join(work, name + ".tar")
    try:
        if not (fs.exists(side) and fs.exists(shard)):
            return None
        info = json.loads(fs.cat_file(side).decode())
        if info.get("run") != run or info.get("keys") != keys or int(fs.size(shard)) != int(info["bytes"]):
            return None
        if fsio.sha256_file(fs, shard) != info["sha256"]:
            return None
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def encode_dataset(
    artifact: DatasetArtifact,
    vae: AutoencoderKL,
    out: str | Path,
    *,
    split: str = "train",
    batch_size: int = 256,
    dtype: str = "float16",
    shard_size: int = 5000,
    progress: Progress | None = None,
    work_dir: str | Path | None = None,
    vae_digest: str | None = None,
    overwrite: bool = False,
) -> LatentMeta:
    """Encode ``split`` of ``artifact`` with ``vae`` (posterior mean) into a latent artifact at ``out``.

    Images are read by row (``read_tensor``, mapped back to pixels with the artifact's mean/std, see
    :func:`pixel_batch`) and encoded with ``encode(vae, x, sample=False)`` in ``batch_size`` chunks on
    the VAE's device; latents are stored as ``dtype`` ``[c, h, w]``.

    Args:
        artifact: the opened source dataset.
        vae: the encoder (eval mode; its device is used).
        out: destination folder (local path or fsspec URL). An existing complete latent artifact with the
            same source, split, VAE and dtype is returned as is; another one raises unless ``overwrite``.
        split, batch_size, dtype, shard_size: see the module docstring.
        progress: ``progress(done, total)`` in samples after each finished or reused shard; an exception
            raised there aborts the run, leaving finished shards for the next call to reuse.
        work_dir: folder for the resumable partial shards (e.g. a stage's checkpoint dir); default the
            hidden sibling ``.<name>.partial`` of ``out``. Removed once the artifact is published.
        vae_digest: identity of the VAE to record (e.g. :func:`ddcore.latent.folders.folder_digest` of its
            folder); default :func:`module_digest`.

    Returns:
        the :class:`LatentMeta` written to ``latents.json`` (with ``run`` filled in).
    """
    if dtype not in DTYPES:
        raise DataError(f"latent dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise DataError("batch_size and shard_size must be >= 1")
    t0 = time.perf_counter()
    rows = artifact.rows(split)
    if rows.size == 0:
        raise DataError(f"split {split!r} of {artifact.uri} is empty; nothing to encode")
    vae_digest = vae_digest or module_digest(vae)
    run = _run_identity(artifact, vae, split=split, dtype=dtype, shard_size=shard_size, batch_size=batch_size,
                        vae_digest=vae_digest)
    fs, final = fsio.get_fs(out)
    if fs.exists(fsio.join(final, LATENT_META)):
        existing = _existing(out, run)
        if existing is not None and not overwrite:
            return existing
        if not overwrite:
            raise ArtifactError(f"a different latent artifact exists at {out}; pass overwrite=True or another out")
    if work_dir is not None:
        wfs, work = fsio.get_fs(work_dir)
        work = fsio.join(work, PARTIAL)
    else:
        wfs = fs
        parent, _, name = final.rstrip("/").rpartition("/")
        work = f"{parent}/.{name}.partial"
    _reset_if_foreign(wfs, work, run)
    n_shards = -(-rows.size // shard_size)
    total, done, encoded, reused = int(rows.size), 0, 0, 0
    infos: list[dict[str, Any]] = []
    latent_shape: list[int] | None = None
    for i in range(n_shards):
        name = f"latents-{i:06d}"
        srows = rows[i * shard_size : (i + 1) * shard_size]
        keys = [artifact.keys[r] for r in srows]
        info = _sidecar_ok(wfs, work, name, run, keys)
        if info is None:
            info = _encode_shard(artifact, vae, wfs, work, name, srows, keys, run, dtype=dtype, batch_size=batch_size)
            encoded += len(srows)
        else:
            reused += 1
        latent_shape = latent_shape or info["latent_shape"]
        if info["latent_shape"] != latent_shape:
            raise ArtifactError(f"shard {name} in {work} has another latent shape; delete the folder and rerun")
        infos.append(info)
        done += len(srows)
        if progress is not None:
            progress(done, total)
    meta = _assemble(artifact, split, fs, final, wfs, work, infos, run, latent_shape or [])
    fsio.remove_quietly(wfs, work)
    meta.run = {"encoded": encoded, "reused_shards": reused, "seconds": time.perf_counter() - t0}
    return meta


def _existing(out: str | Path, run: dict[str, Any]) -> LatentMeta | None:
    try:
        meta = open_latents(out).meta
    except ArtifactError:
        return None
    same = (meta.source.get("digest") == run["source_digest"] and meta.source.get("split") == run["split"]
            and meta.vae_digest == run["vae_digest"] and meta.dtype == run["dtype"])
    if same:
        meta.run = {"encoded": 0, "reused_shards": len(meta.shards), "seconds": 0.0}
    return meta if same else None


def _reset_if_foreign(fs: Any, work: str, run: dict[str, Any]) -> None:
    """Start the work folder afresh when it holds shards of another run (source/VAE/settings)."""
    marker = fsio.join(work, "run.json")
    try:
        same = fs.exists(marker) and json.loads(fs.cat_file(marker).decode()) == run
    except (OSError, ValueError):
        same = False
    if not same:
        fsio.remove_quietly(fs, work)
        fs.makedirs(work, exist_ok=True)
        _write_atomic(fs, marker, json.dumps(run, sort_keys=True).encode())


def _encode_shard(artifact: DatasetArtifact, vae: AutoencoderKL, fs: Any, work: str, name: str,
                  srows: np.ndarray, keys: list[str], run: dict[str, Any], *, dtype: str,
                  batch_size: int) -> dict[str, Any]:
    np_dtype = DTYPES[dtype]
    parts = []
    for j in range(0, srows.size, batch_size):
        x = pixel_batch(artifact, srows[j : j + batch_size])
        z = encode(vae, x, sample=False, chunk=batch_size).float().cpu().numpy().astype(np_dtype)
        if not np.isfinite(z).all():
            raise DataError(f"VAE latents of shard {name} are NaN/Inf in {dtype}; use dtype float32 or check the VAE")
        parts.append(z)
    z = np.concatenate(parts)
    labels = [int(v) for v in artifact.labels[srows]]
    data, members = _shard_bytes(keys, labels, z)
    _write_atomic(fs, fsio.join(work, name + ".tar"), data)
    info = {"run": run, "keys": keys, "labels": labels, "members": members, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "latent_shape": list(z.shape[1:])}
    _write_atomic(fs, fsio.join(work, name + ".json"), json.dumps(info).encode())
    return info


def _assemble(artifact: DatasetArtifact, split: str, fs: Any, final: str, wfs: Any, work: str,
              infos: list[dict[str, Any]], run: dict[str, Any], latent_shape: list[int]) -> LatentMeta:
    tmp = fsio.temp_sibling(fs, final)
    fs.makedirs(tmp, exist_ok=True)
    try:
        cols: dict[str, list] = {k: [] for k in ("key", "label", "shard", "offset", "size", "sha256")}
        shards: dict[str, dict[str, Any]] = {}
        for i, info in enumerate(infos):
            name = f"latents-{i:06d}.tar"
            src, dst = fsio.join(work, name), fsio.join(tmp, name)
            if wfs is fs:
                fs.mv(src, dst)
            else:
                with wfs.open(src, "rb") as fi, fsio.open_write(fs, dst) as fo:
                    while block := fi.read(1 << 22):
                        fo.write(block)
            shards[name] = {"sha256": info["sha256"], "bytes": info["bytes"], "count": len(info["keys"])}
            for key, lab, (off, size, sha) in zip(info["keys"], info["labels"], info["members"], strict=True):
                for col, v in zip(cols, (key, lab, name, off, size, sha), strict=True):
                    cols[col].append(v)
        table = pa.table({
            "key": pa.array(cols["key"], pa.string()), "label": pa.array(cols["label"], pa.int32()),
            "shard": pa.array(cols["shard"], pa.string()), "offset": pa.array(cols["offset"], pa.int64()),
            "size": pa.array(cols["size"], pa.int64()), "sha256": pa.array(cols["sha256"], pa.string()),
        })
        with fsio.open_write(fs, fsio.join(tmp, MANIFEST)) as f:
            pq.write_table(table, f)
        m = artifact.meta
        per_class = np.bincount(np.asarray(cols["label"], np.int64), minlength=m.num_classes).tolist()
        meta = LatentMeta(
            source={"uri": str(artifact.uri), "digest": artifact.digest, "name": m.name, "split": split,
                    "classes": list(m.classes), "image_shape": list(m.image_shape), "mean": list(m.mean),
                    "std": list(m.std)},
            vae_digest=run["vae_digest"], latent_shape=list(latent_shape), dtype=run["dtype"],
            counts={"total": len(cols["key"]), "per_class": per_class}, shard_size=run["shard_size"],
            batch_size=run["batch_size"], shards=shards,
            digest=latent_manifest_digest(cols["key"], cols["label"], cols["shard"], cols["sha256"]),
        )
        with fsio.open_write(fs, fsio.join(tmp, LATENT_META)) as f:
            f.write(meta.to_json().encode())
        fsio.publish(fs, tmp, final, marker=LATENT_META)
    except BaseException:
        fsio.remove_quietly(fs, tmp)
        raise
    return meta
