"""The Prefect side of a stage: its task (built once per :class:`~tasks.runtime.stage.Stage`), the cache
policy keyed on the ddflow stage key, result storage under the store, and retries on transient errors only.

Prefect's default policy includes the run id, so nothing would be reused across flow runs; hashing
inputs would also hash whatever big objects a task receives. Here the cache key is
``<stage>-<stage key>`` (stage name, config digest, upstream sha256 digests, ddflow version), and a
cached Prefect result is dropped before Prefect reads it when the artifact store no longer vouches for
it (output deleted, half-written, altered, or rebuilt with other content) or when the stage is forced.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from ddcore.config import StageConfig
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import Stage
from tasks.runtime.stage_errors import is_transient
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker

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


@functools.cache
def prefect_task(stage: Stage) -> Any:
    """The Prefect task running ``stage`` through :func:`~tasks.runtime.stage.run_stage`.

    The task is called as ``task(store=..., config=..., inputs={...}, tracker=..., force=..., device=...,
    label=...)`` (``label``: the plan node's name for MLflow; not part of the cache key)
    and returns an :class:`ArtifactRef`. Its cache key is ``<stage>-<stage key>``; results are persisted
    (``persist_result=True``) and a cached result is only reused while the store still verifies the
    output. Bind ``result_storage`` to the store with :func:`bind_stage_task` (done by
    ``flows.orchestration.PipelineRun``). Retries (exponential backoff, 10 s base by default) happen
    only for transient errors (:func:`~tasks.runtime.stage.is_transient`); CUDA OOM goes to ``on_oom`` instead.
    """
    from prefect import task
    from prefect.tasks import exponential_backoff

    def stage_task(store: ArtifactStore, config: StageConfig, inputs: Mapping[str, ArtifactRef] | None = None,
                   tracker: Tracker | None = None, force: bool = False, device: str | None = None,
                   label: str | None = None) -> ArtifactRef:
        return stage.run(store, config, inputs, tracker, force=force, device=device, logger=_run_logger(),
                         label=label)

    stage_task.__name__ = stage_task.__qualname__ = f"stage_{stage.name}".replace("-", "_").replace(".", "_")
    delays: Any = stage.retry_delay_seconds
    if delays is None:
        delays = exponential_backoff(10)(max(stage.retries, 1))
    elif isinstance(delays, tuple):
        delays = list(delays)
    return task(stage_task, name=stage.name, cache_policy=StageCachePolicy(stage=stage.name), persist_result=True,
                retries=stage.retries, retry_delay_seconds=delays, retry_condition_fn=retry_on_transient,
                tags=set(stage.tags), timeout_seconds=stage.timeout_seconds)


def bind_stage_task(stage: Stage, store: ArtifactStore, *, refresh: bool = False, label: str | None = None) -> Any:
    """The Prefect task of ``stage`` with its result storage under the store (``<root>/_prefect/results``),
    ``refresh_cache``, and ``label`` (``distill dm ipc10``) as the task run's name in the Prefect UI."""
    options: dict[str, Any] = {"result_storage": result_dir_for(store), "refresh_cache": refresh or None}
    if label:
        options["task_run_name"] = label
    return prefect_task(stage).with_options(**options)


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context
        return logging.getLogger("ddflow.stage")
