"""Source kind ``artifact``: an existing dataset artifact (``ddflow ingest --out DIR``, or a dataset stage output)
used as the run's data as it is, never decoded and re-encoded.

The ingest stage verifies the artifact and places its files (shards, ``manifest.parquet``, ``dataset.json``,
byte for byte) in its own output folder, so the stage output *is* the same dataset: same manifest, same digest,
same class names. Local files are hard-linked when the output is on the same filesystem (no extra space;
safe because artifacts are never edited in place: ``ddflow ingest --overwrite`` replaces the whole folder),
otherwise copied.

The stage key must follow the artifact's content, not its path: :func:`pin_digest` fills an unset ``sha256``
(the field holding the dataset digest; ``digest`` would shadow :meth:`StageConfig.digest`) with the digest the
artifact's ``dataset.json`` records when the run is planned, so a re-ingested artifact at the same path is a new
ingest output, and the stage checks that the artifact still has the pinned digest.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact
from ddcore.data.meta import MANIFEST, METADATA, DatasetMeta
from ddcore.data.storage import disk_errors
from ddcore.errors import ArtifactError

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ArtifactSpec(StageConfig):
    """An existing dataset artifact reused as it is (not re-ingested): its shards, manifest, class names and
    digest become the run's data.

    Attributes:
        kind: ``artifact``.
        path: the artifact folder (local path or fsspec URL), as written by ``ddflow ingest --out``.
        sha256: the dataset digest the artifact must have (``ddflow info`` shows it); ``null``: the digest its
            ``dataset.json`` records when the run is planned. Either way the ingest stage key follows the
            artifact's content; a pinned digest keeps a finished run cached when the artifact is later moved or
            deleted.
        verify: how the artifact is checked before use: ``quick`` (manifest digest, shard presence and sizes)
            or ``full`` (also the sha256 of every shard).
    """

    kind: Literal["artifact"] = "artifact"
    path: str
    sha256: str | None = Field(None, pattern=DIGEST.pattern)
    verify: Literal["quick", "full"] = "quick"


def source_location(path: str) -> str:
    """``path`` as an absolute local path (fsspec URLs unchanged)."""
    return path if fsio.is_url(path) else str(Path(path).expanduser().resolve())


def recorded_digest(path: str) -> str | None:
    """The digest ``dataset.json`` at ``path`` records (unverified), or ``None`` when there is none to read."""
    try:
        fs, p = fsio.get_fs(source_location(path))
        digest = DatasetMeta.from_json(fs.cat_file(fsio.join(p, METADATA)).decode()).digest
    except Exception:  # noqa: BLE001 - unreadable: the stage reports why when it opens the artifact
        return None
    return digest if isinstance(digest, str) and DIGEST.match(digest) else None


def pin_digest(spec: ArtifactSpec) -> ArtifactSpec:
    """``spec`` with ``sha256`` set to the recorded digest when it is unset and readable; otherwise unchanged."""
    if spec.sha256 is not None:
        return spec
    digest = recorded_digest(spec.path)
    return spec if digest is None else spec.model_copy(update={"sha256": digest})


def open_source_artifact(spec: ArtifactSpec) -> DatasetArtifact:
    """The verified artifact of ``spec``.

    Raises:
        ArtifactError: one line each for a missing path, a folder that is not a dataset artifact, a damaged
            artifact, and an artifact whose digest is not the pinned one.
    """
    uri = source_location(spec.path)
    fs, path = fsio.get_fs(uri)
    if not fs.exists(path):
        raise ArtifactError(f"data.source: no dataset artifact at {spec.path} (no such file or folder); pass the "
                            "folder written by 'ddflow ingest SOURCE --out DIR'")
    if not fs.isdir(path) or not fs.exists(fsio.join(path, METADATA)):
        raise ArtifactError(f"data.source: {spec.path} is not a dataset artifact (no {METADATA}); pass the folder "
                            "written by 'ddflow ingest SOURCE --out DIR', or use the source kind that reads it")
    try:
        art = DatasetArtifact.open(uri, verify=spec.verify)
    except ArtifactError as exc:
        why = str(exc).rsplit(";", 1)[0].replace(f"artifact at {uri}", "").strip(" :")
        raise ArtifactError(f"data.source: dataset artifact at {spec.path} is damaged ({why}); ingest it again "
                            "with 'ddflow ingest SOURCE --out DIR --overwrite'") from None
    if spec.sha256 is not None and art.digest != spec.sha256:
        raise ArtifactError(f"data.source: dataset artifact at {spec.path} has digest {art.digest[:16]}, not the "
                            f"pinned {spec.sha256[:16]} (re-ingested since?); set data.source.sha256 to the new "
                            "digest or restore that artifact")
    return art


def reuse_artifact(spec: ArtifactSpec, out: str | Path, *, overwrite: bool = False) -> tuple[DatasetMeta, str]:
    """Verify the artifact of ``spec`` and publish its files, unchanged, as the artifact ``out`` (atomically:
    ``dataset.json`` last). Returns its metadata and how the files were placed (``hardlink`` or ``copy``)."""
    art = open_source_artifact(spec)
    fs, final = fsio.get_fs(out)
    if fs.exists(fsio.join(final, METADATA)) and not overwrite:
        raise ArtifactError(f"artifact already exists at {out}; pass --overwrite or choose another --out")
    tmp = fsio.temp_sibling(fs, final)
    fs.makedirs(tmp, exist_ok=True)
    how: set[str] = set()
    try:
        with disk_errors(str(out)):
            shards = [] if art.meta.in_place else sorted(art.meta.shards)  # in place: they stay where they are
            for name in [*shards, MANIFEST, METADATA]:  # the completion marker last
                how.add(_place(art.fs, fsio.join(art.path, name), fs, fsio.join(tmp, name)))
            fsio.publish(fs, tmp, final, marker=METADATA)
    except BaseException:
        fsio.remove_quietly(fs, tmp)
        raise
    return art.meta, "copy" if "copy" in how else "hardlink"


def _place(src_fs: Any, src: str, dst_fs: Any, dst: str) -> str:
    """Hard-link ``src`` to ``dst`` when both are local on one filesystem, else copy the bytes."""
    if fsio.is_local(src_fs) and fsio.is_local(dst_fs):
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass  # another device, or a filesystem without hard links
    with src_fs.open(src, "rb") as fin, fsio.open_write(dst_fs, dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return "copy"
