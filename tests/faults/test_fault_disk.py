"""Disk full while an artifact is written (a write wrapper raising ENOSPC after a byte budget): one clear
error line, no partial artifact, no pointless retry; once space is back the pipeline completes unchanged."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["orchestration_fixtures", "faultkit"]

from conftest import leftovers  # noqa: E402
from faultkit import error_lines, fingerprint, invoke, temp_leftovers  # noqa: E402
from orchestration_fixtures import REPO  # noqa: E402,F401 - sets PREFECT_HOME before prefect is imported

from ddcore.data import storage  # noqa: E402
from tasks.runtime.stage_errors import is_transient  # noqa: E402

NO_SPACE = re.compile(r"no space left on device while writing .+; free space there or choose another --out / --root")


class FullDisk:
    """A file whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, f: Any, budget: int) -> None:
        self._f, self._left = f, budget

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if n > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Files opened through ``ddcore.data.storage.open_write`` whose path contains ``where["part"]`` and ends
    with ``where["name"]`` get ``where["budget"]`` bytes; set ``where["on"] = False`` to free the disk."""
    real = storage.open_write
    where: dict[str, Any] = {"on": True, "part": "", "name": "", "budget": 0, "hits": []}

    def open_write(fs: Any, path: str) -> Any:
        f = real(fs, path)
        if where["on"] and where["part"] in path and path.endswith(where["name"]):
            where["hits"].append(path)
            return FullDisk(f, where["budget"])
        return f

    monkeypatch.setattr(storage, "open_write", open_write)
    yield where


@pytest.mark.parametrize(("name", "budget"), [("train-000000.tar", 0), ("train-000001.tar", 20_000),
                                               ("test-000000.tar", 3_000), ("manifest.parquet", 100),
                                               ("dataset.json", 10)])
def test_ingest_on_a_full_disk(name: str, budget: int, disk_full: dict[str, Any], fake_fmnist: Path,
                               tmp_path: Path) -> None:
    """``ddflow ingest`` running out of space in any file of the artifact (first, middle or last shard,
    manifest, dataset.json) prints one ``error:`` line naming the cause, exits 2, and leaves nothing at
    --out (no temporary folder either)."""
    disk_full.update(name=name, budget=budget)
    out = tmp_path / "out"
    res = invoke("ingest", str(fake_fmnist), "--out", str(out), "--shard-size", "50")
    assert len(disk_full["hits"]) == 1
    assert res.exit_code == 2, res.output
    (line,) = error_lines(res.output)
    assert NO_SPACE.search(line) and str(out) in line and "Traceback" not in res.output
    assert leftovers(tmp_path, "out") == []


def test_full_disk_is_not_retried() -> None:
    """A full disk is not a transient error (waiting 10 s does not free it), unlike other I/O errors."""
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EIO, "I/O error"))


def test_pipeline_stage_on_a_full_disk_then_space_freed(disk_full: dict[str, Any], fault_config: Path,
                                                        inprocess_reference: Path, tmp_path: Path) -> None:
    """Synthetic-set shards hit a full disk: the run fails with one line naming the stage and the cause, no
    stage key is retried, no set is published and no temporary folder is left; after space is freed the
    next run completes with the outputs of an undisturbed run."""
    disk_full.update(part="/distill/", name="train-000000.tar", budget=2_000)
    root = tmp_path / "root"
    failed = invoke("run", str(fault_config), "--root", str(root))
    assert failed.exit_code == 2, failed.output[-3000:]
    (line,) = error_lines(failed.output)
    assert line.startswith("error: stage 'distill' failed: ArtifactError: ") and NO_SPACE.search(line)
    keys = [m.group(1) for path in disk_full["hits"] if (m := re.search(r"/distill/\.+([0-9a-f]{20})\.tmp-", path))]
    assert len(keys) == len(disk_full["hits"]) >= 1 and len(set(keys)) == len(keys), f"a full disk was retried: {keys}"
    assert not list(root.glob("distill/*/ref.json")) and temp_leftovers(root) == []

    disk_full["on"] = False
    again = invoke("run", str(fault_config), "--root", str(root))
    assert again.exit_code == 0, again.output[-3000:]
    assert fingerprint(root) == fingerprint(inprocess_reference)
