"""Prefect cache policy keyed on the ddflow stage key.

Prefect's default policy includes the run id, so nothing would be reused across flow runs; hashing
inputs would also hash whatever big objects a task receives. Here the cache key is
``<stage>-<stage key>`` (stage name, config digest, upstream sha256 digests, ddflow version), and a
cached Prefect result is dropped before Prefect reads it when the artifact store no longer vouches for
it (output deleted, half-written, altered, or rebuilt with other content) or when the stage is forced.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.runtime.store import ArtifactStore

log = logging.getLogger("ddflow.stage")


def result_dir_for(store: ArtifactStore) -> Path:
    """Prefect result storage of a store: ``<root>/_prefect/results`` (local root), else a folder under
    Prefect's local storage path named after the root."""
    local = store.prefect_result_dir()
    if local is not None:
        return local
    from prefect.settings import get_current_settings

    base = Path(get_current_settings().results.local_storage_path)
    return base / "ddflow" / hashlib.sha256(store.root.encode()).hexdigest()[:16]


def _result_dir(task_ctx: Any) -> Path | None:
    storage = getattr(getattr(task_ctx, "task", None), "result_storage", None)
    if isinstance(storage, Path):
        return storage
    basepath = getattr(storage, "basepath", None)
    if basepath:
        return Path(str(basepath))
    if storage is None:
        from prefect.settings import get_current_settings

        return Path(get_current_settings().results.local_storage_path)
    return None


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache key = ``<stage>-<store.key_for(stage, config, inputs)>`` from the task's own parameters."""

    stage: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str:
        store: ArtifactStore = inputs["store"]
        key = store.key_for(self.stage, inputs["config"], inputs.get("inputs") or {})
        cache_key = f"{self.stage}-{key}"
        result_dir = _result_dir(task_ctx)
        if result_dir is not None:
            _drop_stale_result(result_dir / cache_key, store, self.stage, key, force=bool(inputs.get("force")))
        return cache_key


def _drop_stale_result(path: Path, store: ArtifactStore, stage: str, key: str, *, force: bool) -> None:
    """Delete the Prefect result record at ``path`` unless it names the output the store verifies now."""
    if not path.exists():
        return
    keep = False
    if not force:
        ref = store.lookup(stage, key)
        if ref is not None:
            try:
                from prefect.results import ResultRecord

                keep = ResultRecord.deserialize(path.read_bytes()).result == ref
            except Exception:  # noqa: BLE001 - unreadable record: drop it
                keep = False
    if not keep:
        log.info("stage %s: dropping the cached Prefect result for key %s (%s)", stage, key,
                 "forced" if force else "output missing, invalid or changed")
        path.unlink(missing_ok=True)
