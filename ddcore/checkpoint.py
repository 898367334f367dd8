"""Resumable state, on a local disk or an object store: written atomically, read back without unpickling.

One helper pair serves every loop that resumes: distillation (``loop.pt``), evaluation runs
(``loop.pt`` in their own folder), VAE and denoiser training and the NCFM feature pool. A checkpoint path is a
local path or an fsspec URL (``s3://bucket/root/_checkpoints/...``): a stage re-run on another machine of a
cluster that shares the artifact root resumes from the state the first machine left there.
:func:`save_state` writes a local file to a temporary sibling and renames it, and an object-store file with one
whole-object put (readers see the previous object or the new one); either way a killed process leaves the
previous state or the new one, never half a file. :func:`load_state` uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ddcore.data import storage
from ddcore.errors import ArtifactError, ConfigError

LOOP_CHECKPOINT = "loop.pt"
"""File name of a loop's state inside its checkpoint folder."""


def weights_from_bytes(payload: bytes, *, safetensors: bool) -> Any:
    """What a weights file's bytes hold, on the CPU: a safetensors file as a dict of tensors, anything else through
    ``torch.load(weights_only=True)`` (tensors and plain containers only; nothing else is unpickled). Raises what
    the reader raises (ImportError without the ``safetensors`` package); callers word their own one-line error."""
    if safetensors:
        import safetensors.torch as st

        return dict(st.load(payload))
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def save_state(path: str | Path, state: dict[str, Any]) -> str | Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts/lists) to ``path`` (local path or fsspec URL)
    atomically; returns ``path``."""
    if storage.is_url(path):
        fs, where = storage.get_fs(path)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        fs.pipe_file(where, buffer.getvalue())  # one put: an object store never shows a partial object
        return str(path)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_state(path: str | Path | None, *, what: str = "checkpoint") -> dict[str, Any] | None:
    """The state saved at ``path``, or ``None`` when there is none (``path`` ``None`` or no such file).

    Raises:
        ArtifactError: the file exists but cannot be read as plain tensors and containers (corrupt,
            truncated, or holding pickled objects); the message names ``what`` and says to delete it.
    """
    if path is None:
        return None
    if storage.is_url(path):
        fs, where = storage.get_fs(path)
        try:
            payload = fs.cat_file(where)
        except FileNotFoundError:
            return None
        source: Any = io.BytesIO(payload)
    elif not Path(path).is_file():
        return None
    else:
        source = path
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint must not be trusted
        raise ArtifactError(f"{what} {path} is unreadable ({type(exc).__name__}); delete it to restart") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{what} {path} holds a {type(state).__name__}, not a state mapping; delete it to restart")
    return state


def resume_model(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, key: str, *,
                 what: str, other: str) -> dict[str, Any] | None:
    """Load a ``{"config_key", "model", "optim", ...}`` training state from ``path`` into ``model`` and
    ``optimizer``; returns the state, or ``None`` when there is none.

    Raises:
        ConfigError: the state was written under another ``config_key`` (``other`` says what differed).
        ArtifactError: the file or its tensors do not fit (one line naming ``what`` and the fix).
    """
    state = load_state(path, what=what)
    if state is None:
        return None
    if state.get("config_key") != key:
        raise ConfigError(f"{what} {path} was written with {other}; delete it or use another checkpoint_dir")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{what} {path} is unreadable ({type(exc).__name__}); delete it to restart") from None
    return state


def checkpoint_file(directory: str | Path | None, name: str) -> str | Path | None:
    """``directory/name`` (a :class:`~pathlib.Path` for a local folder, a string keeping the URL scheme for an
    fsspec URL), or ``None`` without a folder."""
    if directory is None:
        return None
    if storage.is_url(directory):
        return storage.join(str(directory), name)
    return Path(directory) / name


def loop_checkpoint(directory: str | Path | None) -> str | Path | None:
    """``directory/loop.pt``, or ``None`` without a folder."""
    return checkpoint_file(directory, LOOP_CHECKPOINT)
