"""Model folders and weights: validate a diffusers ``save_pretrained`` folder (``config.json`` +
weights, safetensors header checked) without touching the hub, load it, digest it, and replace it atomically.

diffusers reads and writes local folders only. A folder under an object-store root (``s3://...``: a run on
several machines) is read through :func:`local_folder` (a temporary local copy) and written by
:func:`save_folder_atomic` to a local temporary folder that is then uploaded file by file.

Used by the VAE (:mod:`ddcore.latent.vae`), the pushforward models and the latent stage. Problems with a
folder raise a one-line :class:`~ddcore.errors.WeightsError` naming the path and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddcore.data import storage
from ddcore.errors import WeightsError

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_MAX_HEADER = 100 * 2**20


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, _MAX_HEADER):
            raise ValueError("header length points past the end of the file")
        header = json.loads(fh.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise ValueError(f"tensor data ends at byte {8 + n + max(ends)} but the file has {size}")


def check_model_folder(path: str | Path, *, class_name: str, what: str = "VAE") -> Path:
    """Validate a local diffusers model folder without touching the hub; return its weights file.

    Raises :class:`WeightsError` (one line with the path and the fix) when the folder is missing, has
    no or an unreadable ``config.json``, names another model class, or lacks / has corrupt weights.
    """
    p = Path(path).expanduser()
    fix = (f"pass a local folder written by save_pretrained (config.json + {WEIGHT_FILES[0]}); "
           "hub ids are never downloaded")
    if not p.is_dir():
        raise WeightsError(f"{what} folder not found: {p}; {fix}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        pipe = (p / "vae" / "config.json").is_file()
        hint = f" (it looks like a pipeline: use {p / 'vae'})" if pipe else ""
        raise WeightsError(f"{what} folder {p} has no config.json{hint}; {fix}")
    try:
        conf = json.loads(cfg_file.read_text())
        if not isinstance(conf, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"{what} config {cfg_file} is not valid JSON ({exc}); re-export the folder"
        raise WeightsError(msg) from None
    found = conf.get("_class_name", class_name)
    if found != class_name:
        raise WeightsError(f"{what} folder {p} holds a {found}, not a {class_name}; pass the right folder")
    for name in WEIGHT_FILES:
        weights = p / name
        if weights.is_file():
            if name.endswith(".safetensors"):
                try:
                    _check_safetensors(weights)
                except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
                    raise WeightsError(f"{what} weights {weights} are truncated or corrupt ({exc}); "
                                       "re-export or re-download them") from None
            return weights
    raise WeightsError(f"{what} folder {p} has no weights file ({' or '.join(WEIGHT_FILES)}); {fix}")


def load_model_folder(cls: Any, path: str | Path, *, what: str) -> Any:
    """``cls.from_pretrained`` on a validated local folder; any loading failure is a WeightsError."""
    weights = check_model_folder(path, class_name=cls.__name__, what=what)
    try:
        model = cls.from_pretrained(str(Path(path).expanduser()), local_files_only=True,
                                    use_safetensors=weights.name.endswith(".safetensors"))
    except Exception as exc:  # diffusers raises OSError/ValueError/RuntimeError/SafetensorError
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        msg = f"{what} folder {path} could not be loaded ({msg}); re-export or re-download it"
        raise WeightsError(msg) from None
    return model.eval()


@contextmanager
def local_folder(folder: str | Path) -> Iterator[Path]:
    """A local path holding the files of ``folder``: the folder itself when local; for an fsspec URL, a
    temporary copy (removed on exit; empty when nothing is stored there)."""
    if not storage.is_url(folder):
        yield Path(folder).expanduser()
        return
    fs, base = storage.get_fs(folder)
    base = base.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="ddflow-model-") as tmp:
        for path in fs.find(base):
            dest = Path(tmp, path[len(base) + 1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(dest))
        yield Path(tmp)


def folder_digest(folder: str | Path) -> str:
    """sha256 over ``relative_path NUL sha256(file) LF`` for every file, sorted by path."""
    if storage.is_url(folder):
        with local_folder(folder) as copy:
            return folder_digest(copy)
    root = Path(folder)
    outer = hashlib.sha256()
    for f in sorted(q for q in root.rglob("*") if q.is_file()):
        inner = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{f.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def save_folder_atomic(folder: str | Path, write: Callable[[Path], None]) -> str:
    """Run ``write(tmp_dir)`` then move ``tmp_dir`` to ``folder`` by rename (replacing an old folder);
    a crash leaves either the old folder or the new one, never a half-written one. Returns the digest.

    ``folder`` may be an fsspec URL: ``write`` then fills a local temporary folder whose files are uploaded
    one by one (not atomic by itself: a pipeline stage writes into the store's temporary output, which the
    store publishes atomically)."""
    if storage.is_url(folder):
        fs, base = storage.get_fs(folder)
        with tempfile.TemporaryDirectory(prefix="ddflow-model-") as tmp:
            write(Path(tmp))
            digest = folder_digest(tmp)
            for f in sorted(q for q in Path(tmp).rglob("*") if q.is_file()):
                fs.put_file(str(f), storage.join(base, f.relative_to(tmp).as_posix()))
        return digest
    dest = Path(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write(tmp)
        digest = folder_digest(tmp)
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, trash / "old")
            os.replace(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest
