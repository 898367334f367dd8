"""Filesystem helpers over fsspec: local paths and any fsspec URL (``s3://``, ``memory://``...).

Artifacts are published atomically: everything is written under a temporary sibling prefix and then
renamed into place. On a local filesystem the rename of the folder is atomic; on object stores the
completion marker (``dataset.json`` or ``ref.json``) is moved last, so a reader never sees a
complete-looking artifact that is not.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ddcore.errors import ArtifactError

TMP_MARK = ".tmp-"


def get_fs(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or fsspec URL.

    Raises:
        ArtifactError: an unknown protocol (``foo://``) or one whose optional package is missing (``s3://``
            without s3fs), as one line naming the URL.
    """
    text = str(uri)
    proto = text.split("::")[-1].split("://", 1)[0]
    # other machines write to a shared store: a cached listing would hide their outputs (and their locks)
    shared = "://" in text and "::" not in text and proto not in ("file", "local", "memory")
    try:
        try:
            fs, path = fsspec.core.url_to_fs(text, **({"use_listings_cache": False} if shared else {}))
        except TypeError:  # a filesystem without listings (or without that option)
            fs, path = fsspec.core.url_to_fs(text)
    except ImportError as exc:
        raise ArtifactError(f"cannot open {text}: the {proto!r} filesystem needs an optional package ({exc}); "
                            "install it in the ddflow environment or use a local path") from None
    except ValueError as exc:
        if "protocol" not in str(exc).lower():
            raise
        raise ArtifactError(f"cannot open {text}: unknown storage protocol {proto!r}; use a local path or an fsspec "
                            "URL (file://, s3://, gs://, http(s)://, memory://)") from None
    return fs, path


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``) rather than a local path."""
    return "://" in str(path)


def local_overlap(a: str | Path, b: str | Path) -> bool:
    """Whether two local paths are the same folder or one lies inside the other (symlinks resolved).

    URLs (``scheme://``) never overlap a path here: publishing to an object store cannot replace a local folder.
    """
    if is_url(a) or is_url(b):
        return False
    x, y = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return x == y or x in y.parents or y in x.parents


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def temp_sibling(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A unique temporary path next to ``path`` (same parent, so a rename stays on one device)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    tmp = f"{parent}/.{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fs.makedirs(parent or "/", exist_ok=True)
    return tmp


def publish(fs: fsspec.AbstractFileSystem, tmp: str, final: str, *, marker: str) -> None:
    """Move a finished temporary folder into place; ``marker`` is moved last on object stores."""
    if is_local(fs):
        os.replace(tmp, final) if not fs.exists(final) else _replace_dir(tmp, final)
        return
    for entry in fs.find(tmp):
        rel = entry[len(tmp.rstrip("/")) + 1 :]
        if rel != marker:
            fs.mv(entry, join(final, rel))
    fs.mv(join(tmp, marker), join(final, marker))
    remove_quietly(fs, tmp)  # an object store has no empty folders: the prefix is usually gone already


def _replace_dir(tmp: str, final: str) -> None:
    trash = f"{final}{TMP_MARK}old-{uuid.uuid4().hex[:8]}"
    os.replace(final, trash)
    os.replace(tmp, final)
    LocalFileSystem().rm(trash, recursive=True)


def remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass


def sha256_file(fs: fsspec.AbstractFileSystem, path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def open_write(fs: fsspec.AbstractFileSystem, path: str) -> BinaryIO:
    parent = path.rstrip("/").rpartition("/")[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return fs.open(path, "wb")


def read_checked_ranges(fs: fsspec.AbstractFileSystem, base: str, rows: Any, *, shards: Any, offsets: Any,
                        sizes: Any, sha256: Any, shard_counts: dict[str, int]) -> list[bytes | None]:
    """Byte ranges ``rows`` of shard files under ``base``; ``None`` where a range fails its sha256.

    Rows are grouped per shard and read in offset order: a shard from which at least 1/8 of its
    samples are wanted is read whole, otherwise each range is read with a seek.

    Args:
        rows: int64 ``[n]`` manifest rows; ``shards``, ``offsets``, ``sizes``, ``sha256`` are the
            manifest columns (indexable by row); ``shard_counts`` maps shard name -> samples in it.
    """
    out: list[bytes | None] = [None] * len(rows)
    by_shard: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_shard.setdefault(shards[r], []).append(i)
    for shard, positions in by_shard.items():
        positions.sort(key=lambda i: offsets[rows[i]])
        with fs.open(join(base, shard), "rb") as f:
            if len(positions) * 8 >= max(int(shard_counts.get(shard, 1) or 1), 1):
                blob = f.read()
                for i in positions:
                    o = int(offsets[rows[i]])
                    out[i] = blob[o : o + int(sizes[rows[i]])]
            else:
                for i in positions:
                    f.seek(int(offsets[rows[i]]))
                    out[i] = f.read(int(sizes[rows[i]]))
    for i, r in enumerate(rows):
        data = out[i]
        if data is not None and hashlib.sha256(data).hexdigest() != sha256[r]:
            out[i] = None
    return out


@contextlib.contextmanager
def disk_errors(where: str) -> Iterator[None]:
    """Turn "no space left on device" (or "quota exceeded") while writing ``where`` into one clear line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ArtifactError(f"no space left on device while writing {where}; free space there or choose "
                            "another --out / --root") from exc


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a :class:`Path` when a file can be created there: not a folder, in an existing folder.

    Raises:
        ArtifactError: one line naming ``option`` and the fix.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ArtifactError(f"{option} {p} is a folder; pass the path of a file to write, e.g. {p / 'grid.png'}")
    if not p.parent.is_dir():
        raise ArtifactError(f"cannot write {p}: folder {p.parent} does not exist; create it or pass another {option}")
    return p


def write_file_atomic(path: str | Path, data: bytes, option: str = "--out") -> None:
    """Write ``data`` to the local file ``path`` through a temporary sibling renamed into place; on failure
    nothing is left behind (neither the file nor the temporary).

    Raises:
        ArtifactError: ``path`` is a folder, its folder is missing, or it cannot be written (read-only, full disk).
    """
    p = check_output_file(path, option)
    tmp = p.with_name(f".{p.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {p} ({exc.strerror or exc}); pass an {option} in a writable folder "
                            "with free space") from None
