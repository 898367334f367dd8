"""Filesystem helpers over fsspec: local paths and any fsspec URL (``s3://``, ``memory://``...).

Artifacts are published atomically: everything is written under a temporary sibling prefix and then
renamed into place. On a local filesystem the rename of the folder is atomic; on object stores the
completion marker (``dataset.json`` or ``ref.json``) is moved last, so a reader never sees a
complete-looking artifact that is not.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"


def get_fs(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or fsspec URL."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


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
    fs.rm(tmp, recursive=True)


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
