"""The content-addressed artifact store: ``<root>/<stage>/<key>/`` folders completed by ``ref.json``.

Layout under ``root`` (a local folder or any fsspec URL; the same code serves both)::

    <root>/<stage>/<key>/...            a finished stage output; ``ref.json`` is its completion marker
    <root>/<stage>/.<key>.tmp-<pid>-..  a stage output being written (never read as valid)
    <root>/_checkpoints/<stage>/<key>/  resumable state of a stage, removed once the stage succeeds
    <root>/_locks/<stage>/<key>.lock    per-key lock
    <root>/_prefect/results/            Prefect result records (local roots)
    <root>/mlflow.db                    default MLflow tracking store (local roots)

``ref.json`` is written last and atomically: the output is completed in a temporary sibling folder,
``ref.json`` is put into it, then the folder is renamed into place (local) or its files are moved with
``ref.json`` last (object stores). :meth:`ArtifactStore.lookup` verifies before it trusts a folder,
so a half-written, truncated or altered output is rebuilt rather than read.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import ddcore
from ddcore.config import StageConfig
from ddcore.data import storage as fsio
from ddcore.errors import ArtifactError
from tasks.runtime import locks
from tasks.runtime.refs import (
    DATASET_KINDS,
    REF_FILE,
    STAGE_NAME_PATTERN,
    ArtifactKind,
    ArtifactRef,
    RefRecord,
    code_version,
    hostname,
    ray_node_id,
    read_record_at,
    utc_now,
)

log = logging.getLogger("ddflow.store")

DATASET_FILE = "dataset.json"
KEY_SCHEME = "ddflow-stage-key/v1"
RESERVED = ("_checkpoints", "_locks", "_prefect", "mlartifacts")
EXCLUDED_DIRS = ("checkpoints", "_checkpoints")
Verify = Literal["auto", "none", "quick", "full"]
STAGE_NAME = re.compile(STAGE_NAME_PATTERN)
KEY_NAME = re.compile(r"[0-9a-f]{8,64}")


class ArtifactStore:
    """Stage outputs under one root (local path or fsspec URL).

    Args:
        root: the store root; a local path is made absolute.
        verify: how :meth:`lookup` checks a folder before trusting it: ``"auto"`` (dataset artifacts:
            manifest digest and shard sizes; other folders: every file re-hashed and the digest
            recomputed), ``"quick"`` (file sizes only, plus the dataset manifest digest), ``"full"``
            (every byte re-hashed, datasets included) or ``"none"`` (``ref.json`` present).
        lock_timeout: seconds to wait for another process computing the same key (``None`` = forever).
        stale_lock_s: object stores only: a lock whose holder has not refreshed its marker for this long
            (a dead node; live holders refresh it every quarter of this) is taken over.
    """

    def __init__(self, root: str | Path, *, verify: Verify = "auto", lock_timeout: float | None = None,
                 stale_lock_s: float = 120.0) -> None:
        text = str(root)
        if not fsio.is_url(text):
            text = str(Path(text).expanduser().resolve())
        self.root = text.rstrip("/") or "/"
        self.verify: Verify = verify
        self.lock_timeout = lock_timeout
        self.stale_lock_s = stale_lock_s
        self._fs: Any = None
        self._base = ""

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArtifactStore) and other.root == self.root and other.verify == self.verify

    def __hash__(self) -> int:
        return hash((self.root, self.verify))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # filesystems are re-created in the receiving process (Ray workers)
        return state

    # -- paths -----------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._base = fsio.get_fs(self.root)
            self._base = self._base.rstrip("/")
        return self._fs

    @property
    def is_local(self) -> bool:
        return fsio.is_local(self.fs)

    def uri(self, *parts: str) -> str:
        """URI of ``parts`` under the root (keeps the URL scheme, so it can be handed to other code)."""
        return "/".join([self.root, *parts])

    def _p(self, *parts: str) -> str:
        self.fs  # noqa: B018 - resolves _base
        return "/".join([self._base, *parts])

    def _path_of(self, uri: str) -> str:
        return fsio.get_fs(uri)[1].rstrip("/")

    def location(self, stage: str, key: str) -> str:
        """URI of the (final) output folder of ``stage``/``key``."""
        check_names(stage, key)
        return self.uri(stage, key)

    def checkpoint_dir(self, stage: str, key: str) -> str:
        """URI of the resumable-state folder of ``stage``/``key`` (created; outside the output folder)."""
        check_names(stage, key)
        self.fs.makedirs(self._p("_checkpoints", stage, key), exist_ok=True)
        return self.uri("_checkpoints", stage, key)

    def prefect_result_dir(self) -> Path | None:
        """Where Prefect result records live (``<root>/_prefect/results``), or ``None`` for remote roots."""
        return Path(self._p("_prefect", "results")) if self.is_local else None

    # -- keys ------------------------------------------------------------------------------
    def key_for(self, stage: str, config: StageConfig,
                upstream: Sequence[ArtifactRef] | Mapping[str, ArtifactRef] = ()) -> str:
        """Content address of a stage output: :func:`stage_key`."""
        return stage_key(stage, config, upstream)

    # -- reading ---------------------------------------------------------------------------
    def read_record(self, stage: str, key: str) -> RefRecord | None:
        """The ``ref.json`` of ``stage``/``key`` without verifying the folder, or ``None``.

        A root that was moved or copied still holds the old location in its ``ref.json`` files; the record
        is returned pointing at the folder found here, so that this folder is what gets verified and read.
        """
        here = self.location(stage, key)
        rec = self.read_record_at(here, expect=(stage, key))
        if rec is not None and rec.ref.uri != here:
            rec = rec.model_copy(update={"ref": rec.ref.model_copy(update={"uri": here})})
        return rec

    def read_record_at(self, uri: str, *, expect: tuple[str, str] | None = None) -> RefRecord | None:
        """The ``ref.json`` in folder ``uri`` (any store), or ``None`` when absent or unreadable."""
        return read_record_at(uri, expect=expect)

    def lookup(self, stage: str, key: str, *, verify: Verify | None = None) -> ArtifactRef | None:
        """The verified output of ``stage``/``key``, or ``None`` when absent, incomplete or corrupt."""
        rec = self.read_record(stage, key)
        if rec is None:
            return None
        problem = self.check(rec, verify=verify)
        if problem:
            log.warning("%s/%s fails verification (%s); it will be rebuilt", stage, key, problem)
            return None
        return rec.ref

    def check(self, rec: RefRecord, *, verify: Verify | None = None) -> str | None:
        """Verify the folder of ``rec`` against it; return the problem found, or ``None`` when it is intact."""
        level = verify or self.verify
        if level == "none":
            return None
        fs, path = fsio.get_fs(rec.ref.uri)
        path = path.rstrip("/")
        if rec.digest_method == "dataset":
            from ddcore.data.artifact import DatasetArtifact

            try:
                art = DatasetArtifact.open(rec.ref.uri, verify="full" if level == "full" else "quick")
            except ArtifactError as exc:
                return str(exc)
            if art.digest != rec.ref.sha256:
                return "dataset digest differs from ref.json"
            sizes = _listing(fs, path)
            if sizes != rec.files:
                return _files_problem(rec.files, sizes)
            return None
        if level == "quick":
            sizes = _listing(fs, path)
            return None if sizes == rec.files else _files_problem(rec.files, sizes)
        digest, sizes = tree_digest(fs, path)
        if sizes != rec.files:
            return _files_problem(rec.files, sizes)
        return None if digest == rec.ref.sha256 else "content digest differs from ref.json"

    def records(self) -> Iterator[RefRecord]:
        """Every readable ``<root>/<stage>/<key>/ref.json`` (unverified), in path order."""
        fs = self.fs
        try:
            found = sorted(fs.glob(self._p("*", "*", REF_FILE)))
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - a remote root that cannot be reached (network, credentials)
            raise ArtifactError(self._unreachable(exc)) from None
        for p in found:
            parts = p.rstrip("/").split("/")
            stage, key = parts[-3], parts[-2]
            if not STAGE_NAME.fullmatch(stage) or not KEY_NAME.fullmatch(key) or stage in RESERVED:
                continue
            rec = self.read_record(stage, key)
            if rec is not None:
                yield rec

    def check_reachable(self) -> None:
        """Raise :class:`ArtifactError` when the root cannot be listed (an unreachable server, missing credentials);
        a root that does not exist yet is fine."""
        try:
            self.fs.ls(self._p())
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - whatever the filesystem raises for an unreachable store
            raise ArtifactError(self._unreachable(exc)) from None

    def _unreachable(self, exc: BaseException) -> str:
        return (f"cannot read the artifact root {self.root} ({type(exc).__name__}: {exc}); check the URL, the "
                "network and the store's credentials, or pass another --root")

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (and threads)."""
        check_names(stage, key)
        what = f"stage {stage} key {key}"
        if self.is_local:
            with locks.local_lock(self._p("_locks", stage, f"{key}.lock"), timeout=self.lock_timeout, what=what):
                yield
        else:
            with locks.marker_lock(self.fs, self._p("_locks", stage, f"{key}.lock"), timeout=self.lock_timeout,
                                   stale_after_s=self.stale_lock_s, what=what):
                yield

    def begin(self, stage: str, key: str) -> str:
        """A fresh, empty temporary output folder for ``stage``/``key`` (call while holding :meth:`lock`).

        Temporary folders abandoned by earlier attempts at this key are removed first.
        """
        check_names(stage, key)
        self.clean_temps(stage, key)
        tmp = fsio.temp_sibling(self.fs, self._p(stage, key))
        self.fs.makedirs(tmp, exist_ok=True)
        return self._to_uri(tmp)

    def clean_temps(self, stage: str, key: str) -> None:
        """Remove temporary siblings of ``stage``/``key`` (only safe while holding its lock)."""
        parent = self._p(stage)
        try:
            names = [e.rstrip("/").rpartition("/")[2] for e in self.fs.ls(parent, detail=False)]
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") and f"{key}{fsio.TMP_MARK}" in name:
                log.info("removing abandoned temporary folder %s/%s", stage, name)
                fsio.remove_quietly(self.fs, f"{parent}/{name}")

    def discard(self, tmp_uri: str) -> None:
        fsio.remove_quietly(self.fs, self._path_of(tmp_uri))

    def clear_checkpoint(self, stage: str, key: str) -> None:
        fsio.remove_quietly(self.fs, self._p("_checkpoints", stage, key))

    def publish(self, stage: str, key: str, tmp_uri: str, *, kind: ArtifactKind, config: StageConfig,
                inputs: Mapping[str, ArtifactRef], metrics: Mapping[str, Any], started_at: str,
                duration_s: float, effective_config: StageConfig | None = None, tracking: Mapping[str, str] | None
                = None, peak_rss_mb: float = 0.0) -> ArtifactRef:
        """Seal the temporary folder: digest it, write ``ref.json`` (atomically) and move it into place;
        ``tracking`` names the MLflow run that computed it (``uri``, ``run_id``).

        Raises:
            ArtifactError: a ``dataset``/``synthetic`` stage wrote no valid dataset artifact.
        """
        fs, tmp = self.fs, self._path_of(tmp_uri)
        fs.invalidate_cache()
        sha, files, method = output_digest(fs, tmp, tmp_uri)
        if method == "tree" and kind in DATASET_KINDS:
            raise ArtifactError(
                f"stage {stage} declares kind {kind!r} but wrote no dataset.json into its output folder; "
                "write a dataset artifact there or declare another kind"
            )
        ref = ArtifactRef(uri=self.location(stage, key), sha256=sha, stage=stage, key=key, kind=kind)
        rec = RefRecord(
            ref=ref, config=config.model_dump(mode="json"), config_digest=config.digest(),
            config_class=f"{type(config).__module__}.{type(config).__qualname__}",
            effective_config=None if effective_config is None else effective_config.model_dump(mode="json"),
            inputs=dict(inputs), code_version=code_version(), started_at=started_at, finished_at=utc_now(),
            duration_s=round(float(duration_s), 3), peak_rss_mb=float(peak_rss_mb), metrics=dict(metrics),
            files=files, digest_method=method,
            host=hostname(), node=ray_node_id(), tracking=dict(tracking or {}),
        )
        part = fsio.join(tmp, f".{REF_FILE}{fsio.TMP_MARK}")
        with fsio.open_write(fs, part) as f:
            f.write(rec.to_json().encode())
        fs.mv(part, fsio.join(tmp, REF_FILE))
        final = self._p(stage, key)
        if fs.exists(final) and not self.is_local:
            fsio.remove_quietly(fs, fsio.join(final, REF_FILE))  # invalidate first, then clear
            fsio.remove_quietly(fs, final)
        fs.makedirs(self._p(stage), exist_ok=True)
        fsio.publish(fs, tmp, final, marker=REF_FILE)
        fs.invalidate_cache()
        return ref

    def _to_uri(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)


def output_digest(fs: Any, path: str, uri: str) -> tuple[str, dict[str, int], Literal["dataset", "tree"]]:
    """``(sha256, file listing, digest method)`` of an output folder (``path`` on ``fs``, also reachable as
    ``uri``): a dataset artifact's manifest digest, else the tree digest of its files."""
    if fs.exists(fsio.join(path, DATASET_FILE)):
        from ddcore.data.artifact import DatasetArtifact

        return DatasetArtifact.open(uri, verify="quick").digest, _listing(fs, path), "dataset"
    sha, files = tree_digest(fs, path)
    return sha, files, "tree"


def stage_key(stage: str, config: StageConfig,
              upstream: Sequence[ArtifactRef] | Mapping[str, ArtifactRef] = ()) -> str:
    """Content address of a stage output (20 hex chars): hash of the stage name, ``config.digest()``, the
    upstream sha256 digests (with their input names when a mapping is given) and the ddflow version."""
    check_names(stage)
    if isinstance(upstream, Mapping):
        ups = [f"{name}={upstream[name].sha256}" for name in sorted(upstream)]
    else:
        ups = [ref.sha256 for ref in upstream]
    text = "|".join([KEY_SCHEME, stage, config.digest(), *ups, ddcore.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def check_names(stage: str, key: str | None = None) -> None:
    """Stage names and keys become folder names under the root: no separators, no '..', nothing reserved."""
    if not STAGE_NAME.fullmatch(stage) or stage in RESERVED:
        raise ArtifactError(f"stage name {stage!r} is reserved or not a plain folder name; use letters, digits, '_', "
                            f"'.', '-' starting with a letter or digit, and none of {', '.join(RESERVED)}")
    if key is not None and not KEY_NAME.fullmatch(key):
        raise ArtifactError(f"stage key {key!r} is not allowed: keys are 8-64 lowercase hex digits")


def _listing(fs: Any, path: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``path`` except ``ref.json`` and checkpoints."""
    out: dict[str, int] = {}
    base = path.rstrip("/")
    for entry, info in fs.find(base, detail=True).items():
        rel = entry.rstrip("/")[len(base) + 1:]
        if not rel or rel == REF_FILE or rel.split("/", 1)[0] in EXCLUDED_DIRS or rel.startswith(f".{REF_FILE}"):
            continue
        if info.get("type", "file") == "file":
            out[rel] = int(info.get("size") or 0)
    return dict(sorted(out.items()))


def tree_digest(fs: Any, path: str) -> tuple[str, dict[str, int]]:
    """sha256 over sorted ``"<relative path>\\0<file sha256>\\n"`` lines, and the ``{path: size}`` listing."""
    files = _listing(fs, path)
    h = hashlib.sha256()
    base = path.rstrip("/")
    for rel in files:
        h.update(f"{rel}\0{fsio.sha256_file(fs, f'{base}/{rel}')}\n".encode())
    return h.hexdigest(), files


def _files_problem(expected: dict[str, int], found: dict[str, int]) -> str:
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"missing file {missing[0]}"
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"unexpected file {extra[0]}"
    for rel in expected:
        if expected[rel] != found[rel]:
            return f"{rel} has {found[rel]} bytes, expected {expected[rel]} (truncated or altered)"
    return "file listing differs"
