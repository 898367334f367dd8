"""References to stage outputs, and the completion record (``ref.json``) each output folder carries.

Stages exchange :class:`ArtifactRef` values, never tensors: a ref is small, frozen, hashable and has
a stable JSON form, so Prefect can pass it between tasks (threads or Ray workers) and cache on it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import ddcore
from ddcore.data import storage as fsio

ArtifactKind = Literal[
    "dataset", "synthetic", "features", "latents", "vae", "teacher", "model", "eval", "report", "other"
]
"""What a stage output is. ``dataset`` and ``synthetic`` outputs must be dataset artifacts (``dataset.json``)."""

DATASET_KINDS = ("dataset", "synthetic")
STAGE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
REF_FORMAT_VERSION = 1


REF_FILE = "ref.json"
"""The completion marker and lineage record in every published output folder."""
_log = logging.getLogger("ddflow.store")

class ArtifactRef(BaseModel):
    """Where a stage output lives and what it contains.

    Attributes:
        uri: the output folder (local absolute path or fsspec URL).
        sha256: content digest (a dataset's manifest digest, or the folder's tree digest).
        stage: name of the stage that produced it.
        key: the stage key (content address of stage name, config, upstream digests, version).
        kind: what the folder holds (see :data:`ArtifactKind`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    stage: str = Field(pattern=STAGE_NAME_PATTERN)
    key: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    kind: ArtifactKind

    @property
    def short(self) -> str:
        """The first 16 hex chars of :attr:`sha256` (what MLflow records as the dataset digest)."""
        return self.sha256[:16]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the same ref always gives the same text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ArtifactRef:
        return cls.model_validate_json(text)


class RefRecord(BaseModel):
    """Contents of ``ref.json``: the completion marker and lineage record of one stage output.

    Attributes:
        ref: the output reference.
        config: the stage config as JSON (the *requested* one; the stage key is computed from it).
        config_digest: ``config.digest()``.
        config_class: qualified name of the config model.
        effective_config: the config actually run when an out-of-memory hook changed it, else ``None``.
        inputs: upstream refs by input name.
        code_version: ``{"ddflow": version, "git": commit or None, "dirty": bool or None}``.
        started_at, finished_at: ISO-8601 UTC timestamps; ``duration_s`` the wall time of the stage function.
        peak_rss_mb: the process's peak resident memory while the stage ran (:mod:`tasks.runtime.memory`).
        metrics: what the stage function returned.
        files: ``{relative path: size in bytes}`` of every file of the output (``ref.json`` excluded).
        digest_method: ``"dataset"`` (sha256 = ``dataset.json`` digest) or ``"tree"`` (sha256 over the
            sorted ``(relative path, file sha256)`` pairs).
        host: machine that produced it.
        node: the Ray node id of the worker that ran the stage (``None`` outside Ray): on a cluster of several
            nodes, where each task ran.
        tracking: ``{"uri", "run_id"}`` of the MLflow run that computed it (empty when untracked); a run
            that finds the output cached links that run instead of logging one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    format_version: int = REF_FORMAT_VERSION
    ref: ArtifactRef
    config: dict[str, Any]
    config_digest: str
    config_class: str
    effective_config: dict[str, Any] | None = None
    inputs: dict[str, ArtifactRef] = Field(default_factory=dict)
    code_version: dict[str, Any] = Field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    peak_rss_mb: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, int] = Field(default_factory=dict)
    digest_method: Literal["dataset", "tree"] = "tree"
    host: str = ""
    node: str | None = None
    tracking: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> RefRecord:
        return cls.model_validate_json(text)


def utc_now() -> str:
    """Current UTC time as ISO-8601 with seconds precision."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def ray_node_id() -> str | None:
    """The Ray node this process runs on when it is a Ray worker or driver (``None`` without Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - a record without the node beats a failed stage
        return None


def hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover - exotic hosts
        return "unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``ddcore.__version__`` plus the git commit of the checkout ddcore was imported from, if any."""
    repo = Path(ddcore.__file__).resolve().parents[1]
    out: dict[str, Any] = {"ddflow": ddcore.__version__, "git": None, "dirty": None}
    if not (repo / ".git").exists():
        return out
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, env=env)
        if head.returncode == 0:
            out["git"] = head.stdout.strip()
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5, env=env)
            out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def code_version_label(version: dict[str, Any] | None = None) -> str:
    """``0.1.0+g1a2b3c4d`` (``.dirty`` appended when the checkout had local changes)."""
    v = code_version() if version is None else version
    label = str(v.get("ddflow", "?"))
    if v.get("git"):
        label += f"+g{str(v['git'])[:8]}" + (".dirty" if v.get("dirty") else "")
    return label


def numbered(prefix: str, i: int) -> str:
    """The name of the ``i``-th of a stage's numbered inputs, e.g. ``round-000`` or ``part-002``."""
    return f"{prefix}-{i:03d}"


def numbered_inputs(inputs: dict[str, ArtifactRef], prefix: str, count: int, stage: str) -> list[ArtifactRef]:
    """Inputs ``<prefix>-000`` ... in order, checked to be exactly ``count`` of them (one error line otherwise)."""
    from ddcore.errors import DataError

    want = [numbered(prefix, i) for i in range(count)]
    names = sorted(k for k in inputs if k.startswith(f"{prefix}-"))
    if names != want:
        raise DataError(f"{stage} needs inputs {want[0]}..{want[-1]} ({count}), got {', '.join(names) or 'none'}; "
                        "run it through the flow, which passes them")
    return [inputs[n] for n in want]


def read_record_at(uri: str, *, expect: tuple[str, str] | None = None) -> RefRecord | None:
    """The ``ref.json`` of the published output in folder ``uri`` (of any store, local or remote), or ``None``
    when absent or unreadable; with ``expect=(stage, key)``, also ``None`` when it names another output."""
    fs, path = fsio.get_fs(uri)
    try:
        rec = RefRecord.from_json(fs.cat_file(fsio.join(path.rstrip("/"), REF_FILE)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _log.warning("unreadable %s in %s (%s); treating the output as missing", REF_FILE, uri, type(exc).__name__)
        return None
    if expect is not None and (rec.ref.stage, rec.ref.key) != expect:
        _log.warning("%s in %s names %s/%s; treating the output as missing", REF_FILE, uri, rec.ref.stage, rec.ref.key)
        return None
    return rec
