"""Running one pipeline stage: cache lookup, per-key lock, atomic publish, tracking; and its Prefect task.

A stage function is pure library code (it never imports prefect or mlflow)::

    def stage_fn(inputs: dict[str, ArtifactRef], config: MyStageConfig, out: str,
                 ctx: StageContext) -> dict[str, float | int | str]:
        # read inputs by ref.uri, write the output folder `out` (resume from ctx.checkpoint_dir),
        # return a small JSON-serialisable summary

:func:`run_stage` calls it at most once per stage key across processes and publishes ``out`` under
``<root>/<stage>/<key>/`` with its ``ref.json``. :func:`make_stage_task` declares a :class:`Stage` (name,
function, artifact kind, run options); its Prefect task (``Stage.task``, made on first use by
``tasks.runtime.prefect_task``) has the stage key as cache key (never the run id, never a hash of tensors),
so re-running a flow after a failure in stage k shows ``Cached`` for the stages before k and executes only
k and after. Declaring a stage imports nothing of Prefect: the direct executor
(``benchmarks/direct_pipeline.py``) calls ``Stage.fn`` without it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddcore.config import StageConfig
from ddcore.threads import stage_threads, torch_threads
from tasks.runtime.memory import PeakMemory
from tasks.runtime.progress import StageProgress
from tasks.runtime.refs import ArtifactKind, ArtifactRef, utc_now
from tasks.runtime.stage_errors import StageError
from tasks.runtime.stage_run import StageRun
from tasks.runtime.stop import check_stop
from tasks.runtime.store import REF_FILE, ArtifactStore
from tasks.runtime.tracking import Tracker

StageResult = Mapping[str, float | int | str] | None
OomHook = Callable[[StageConfig, int], StageConfig | None]
"""``on_oom(config, attempt)`` -> a config to retry with (e.g. a smaller batch) or ``None`` to give up."""

def _forget_inherited_thread_exit_hooks() -> None:
    """In a forked child (e.g. a DataLoader worker started inside a stage), drop the thread-exit hooks it
    inherited: they belong to the parent's threads, and Prefect's log/event services register one that
    fails in the child, so every worker exited with code 1 ("DataLoader worker exited unexpectedly")."""
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_thread_exit_hooks)

FAULT_ENV = "DDFLOW_FAULT"
FAULT_SLEEP_ENV = "DDFLOW_FAULT_SLEEP"


@dataclass
class StageContext:
    """What a stage function gets besides its inputs and config.

    Attributes:
        stage, key: the stage name and stage key.
        checkpoint_dir: URI of a folder for resumable state, under the store's root (an object-store URL for a
            remote root, so a stage re-run on another node resumes there); it survives failures and is removed
            once the stage has been published.
        device: ``"cuda:N"`` or ``"cpu"``; the stage must put its tensors there.
        seed: ``config.seed`` when the config has one, else a number derived from the stage key.
        attempt: 0, or the number of out-of-memory retries so far.
        logger: where to log progress lines.
        label: the plan node's name (``distill dm ipc10``) used in progress lines; default the stage name.
    """

    stage: str
    key: str
    checkpoint_dir: str
    device: str
    seed: int
    logger: logging.Logger | logging.LoggerAdapter = field(default_factory=lambda: logging.getLogger("ddflow.stage"))
    attempt: int = 0
    run: StageRun | None = None
    label: str | None = None
    _progress: StageProgress | None = field(default=None, repr=False)
    _started: float = field(default_factory=time.monotonic, repr=False)  # elapsed/ETA count from the stage's start

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record numeric ``metrics`` at ``step`` (batched to MLflow; a no-op without tracking).

        Raises:
            StageStopped: the run was stopped (:mod:`tasks.runtime.stop`); the checkpoint stays for the next run.
        """
        if self.run is not None:
            self.run.log_metrics(step, metrics)
        fault_point(self.stage, f"step{int(step)}")
        check_stop(self.stage, self.key)

    def progress(self, done: int, total: int, unit: str = "steps", **metrics: Any) -> None:
        """Report that ``done`` of ``total`` units are finished (a log line every few seconds, a Prefect
        progress artifact, the terminal's bar: :mod:`tasks.runtime.progress`).

        Raises:
            StageStopped: the run was stopped (:mod:`tasks.runtime.stop`); the checkpoint stays for the next run.
        """
        if self._progress is None:
            self._progress = StageProgress(self.label or self.stage, self.logger, started=self._started)
        self._progress.update(int(done), int(total), unit, **metrics)
        check_stop(self.stage, self.key)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a local file (image, report) to the stage's MLflow run."""
        if self.run is not None:
            self.run.log_artifact(path, artifact_path)


StageFn = Callable[[dict[str, ArtifactRef], Any, str, StageContext], StageResult]


def run_stage(store: ArtifactStore, stage_name: str, fn: StageFn, inputs: Mapping[str, ArtifactRef],
              config: StageConfig, kind: ArtifactKind, tracker: Tracker | None = None, *, force: bool = False,
              device: str | None = None, on_oom: OomHook | None = None, max_oom_retries: int = 3,
              logger: logging.Logger | logging.LoggerAdapter | None = None, label: str | None = None) -> ArtifactRef:
    """Return the output of ``stage_name`` for ``config`` and ``inputs``, computing it only when needed.

    Verified output present (and not ``force``) -> returned (tracked as ``cached``). Otherwise the
    per-key lock is taken, the store re-checked (another process may have just finished it), ``fn`` is
    run into a fresh temporary folder, and the folder is published with ``ref.json``. ``label`` names
    the MLflow run (``distill dm ipc10``; default: the stage name).

    Raises:
        StageError: ``fn`` failed (the message names the stage; ``.cause`` is the original error).
    """
    log = logger or logging.getLogger("ddflow.stage")
    inputs = _checked_inputs(stage_name, inputs)
    tracker = tracker or Tracker.disabled()
    key = store.key_for(stage_name, config, inputs)
    if not force and (ref := store.lookup(stage_name, key)) is not None:
        log.info("stage %s: cached (key %s, sha256 %s)", stage_name, key, ref.short)
        tracker.record_cached(stage_name, ref, label=label)
        return ref
    with store.lock(stage_name, key):
        if not force and (ref := store.lookup(stage_name, key)) is not None:
            log.info("stage %s: cached, computed meanwhile by another run (key %s)", stage_name, key)
            tracker.record_cached(stage_name, ref, label=label)
            return ref
        return _compute(store, stage_name, key, fn, inputs, config, kind, tracker, device=device, on_oom=on_oom,
                        max_oom_retries=max_oom_retries, log=log, label=label)


def call_stage(fn: StageFn, inputs: Mapping[str, ArtifactRef], config: StageConfig, out: str,
               ctx: StageContext) -> StageResult:
    """Call a stage function with torch's CPU thread count pinned to the config's
    (:func:`ddcore.threads.stage_threads`): the same key gives the same bytes under every runner and machine
    core count. Every executor calls stage functions through here."""
    with torch_threads(stage_threads(config)):
        return fn(dict(inputs), config, out, ctx)


def _compute(store: ArtifactStore, stage: str, key: str, fn: StageFn, inputs: dict[str, ArtifactRef],
             config: StageConfig, kind: ArtifactKind, tracker: Tracker, *, device: str | None,
             on_oom: OomHook | None, max_oom_retries: int,
             log: logging.Logger | logging.LoggerAdapter, label: str | None = None) -> ArtifactRef:
    log.info("stage %s: computing (key %s)", stage, key)
    run = tracker.start_stage(stage, key, config, inputs, kind=kind, label=label)
    ctx = StageContext(stage=stage, key=key, checkpoint_dir=store.checkpoint_dir(stage, key),
                       device=resolve_device(device), seed=stage_seed(config, key), logger=log, run=run, label=label)
    started, t0 = utc_now(), time.perf_counter()
    effective, tmp, memory = config, None, PeakMemory()
    try:
        with memory:
            effective, tmp, result = _call_with_oom_retries(store, stage, key, fn, inputs, config, ctx, on_oom,
                                                            max_oom_retries, log)
        fault_point(stage, "after")
        metrics = _checked_metrics(stage, result)
        ref = store.publish(stage, key, tmp, kind=kind, config=config, inputs=inputs, metrics=metrics,
                            started_at=started, duration_s=time.perf_counter() - t0,
                            effective_config=None if effective is config else effective,
                            tracking=run.reference(), peak_rss_mb=memory.mb)
    except BaseException as exc:
        if tmp is not None:
            store.discard(tmp)
        run.fail(exc)
        if isinstance(exc, Exception) and not isinstance(exc, StageError):
            raise StageError.wrap(stage, key, exc) from exc
        raise
    store.clear_checkpoint(stage, key)
    ref_file = f"{ref.uri}/{REF_FILE}" if store.is_local else None
    run.finish(ref, {**metrics, "peak_rss_mb": memory.mb}, ref_file=ref_file)
    log.info("stage %s: done in %.1fs (key %s, sha256 %s, peak RSS %.0f MB)", stage, time.perf_counter() - t0, key,
             ref.short, memory.mb)
    return ref


def _call_with_oom_retries(store: ArtifactStore, stage: str, key: str, fn: StageFn, inputs: dict[str, ArtifactRef],
                           config: StageConfig, ctx: StageContext, on_oom: OomHook | None, max_oom_retries: int,
                           log: logging.Logger | logging.LoggerAdapter) -> tuple[StageConfig, str, StageResult]:
    """Run ``fn`` into a fresh temporary folder, retrying with ``on_oom``'s smaller config after a CUDA
    out-of-memory error; returns ``(config run, its folder, result)``."""
    effective = config
    while True:
        tmp = store.begin(stage, key)
        try:
            fault_point(stage, "before")
            return effective, tmp, call_stage(fn, inputs, effective, tmp, ctx)
        except Exception as exc:
            retry = on_oom is not None and is_cuda_oom(exc) and ctx.attempt < max_oom_retries
            smaller = on_oom(effective, ctx.attempt + 1) if retry and on_oom is not None else None
            store.discard(tmp)
            if smaller is None:
                raise
            log.warning("stage %s: CUDA out of memory; retrying with %s", stage, _config_change(effective, smaller))
            free_cuda_memory()
            effective, ctx.attempt = smaller, ctx.attempt + 1
        except BaseException:
            store.discard(tmp)
            raise


def fault_point(stage: str, point: str) -> None:
    """Fault injection for the reliability tests; does nothing unless the environment asks for it.

    ``DDFLOW_FAULT=<stage>[:<point>][,...]`` raises ``RuntimeError("injected fault in stage <stage> (<point>)")``
    and ``DDFLOW_FAULT_SLEEP=<stage>:<point>:<seconds>[,...]`` sleeps (a window for ``kill -9``) when stage
    ``<stage>`` reaches ``<point>``: ``before`` (the default; output folder empty), ``after`` (the stage
    function returned; output written, not yet published) or ``step<N>`` (the stage logged metrics for
    step N, e.g. right after evaluation round N was checkpointed).
    """
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_ENV, "").split(","))):
        name, _, where = entry.partition(":")
        if (name, where or "before") == (stage, point):
            raise RuntimeError(f"injected fault in stage {stage} ({point})")
    for entry in filter(None, (e.strip() for e in os.environ.get(FAULT_SLEEP_ENV, "").split(","))):
        name, _, rest = entry.partition(":")
        where, _, seconds = rest.rpartition(":")
        if (name, where) == (stage, point):
            time.sleep(float(seconds))


def _checked_inputs(stage: str, inputs: Mapping[str, ArtifactRef] | None) -> dict[str, ArtifactRef]:
    out = dict(inputs or {})
    for name, ref in out.items():
        if not isinstance(ref, ArtifactRef):
            raise StageError(f"stage '{stage}': input {name!r} is a {type(ref).__name__}, not an ArtifactRef; "
                             "pass the ref returned by the upstream stage", stage=stage)
    return out


def _checked_metrics(stage: str, result: StageResult) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise TypeError(f"stage function returned {type(result).__name__}; return a dict of numbers/strings")
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, bool | int | str) or v is None:
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = v if math.isfinite(v) else str(v)
        elif hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
            item = v.item()
            out[str(k)] = item if not isinstance(item, float) or math.isfinite(item) else str(item)
        else:
            raise TypeError(f"metric {k!r} is a {type(v).__name__}; return numbers or strings only")
    return out


def _config_change(old: StageConfig, new: StageConfig) -> str:
    a, b = old.model_dump(), new.model_dump()
    diff = [f"{k}={b[k]!r}" for k in b if a.get(k) != b[k]]
    return ", ".join(diff) or "the same config"


def stage_seed(config: StageConfig, key: str) -> int:
    """``config.seed`` when it is an int, else ``int(key[:8], 16)`` (deterministic, never the clock)."""
    seed = getattr(config, "seed", None)
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else int(key[:8], 16)


def resolve_device(device: str | None) -> str:
    """``device`` as given, else ``cuda:0`` when CUDA is available, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def free_cuda_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- stage declarations ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Stage:
    """A pipeline stage: ``fn`` run by :func:`run_stage` as stage ``name``, producing an artifact of ``kind``.

    ``tags`` (``gpu`` marks stages that want an accelerator), ``retries`` / ``retry_delay_seconds`` (transient
    errors only), ``on_oom`` and ``timeout_seconds`` are the Prefect task's options. :attr:`task` builds
    that task on first use, so importing a stage module never imports Prefect.
    """

    name: str
    fn: StageFn
    kind: ArtifactKind
    tags: tuple[str, ...] = ()
    retries: int = 2
    retry_delay_seconds: float | tuple[float, ...] | None = None
    on_oom: OomHook | None = None
    timeout_seconds: float | None = None

    @property
    def task(self) -> Any:
        """The Prefect task of this stage (one per stage, built lazily)."""
        from tasks.runtime.prefect_task import prefect_task

        return prefect_task(self)

    def run(self, store: ArtifactStore, config: StageConfig, inputs: Mapping[str, ArtifactRef] | None = None,
            tracker: Tracker | None = None, *, force: bool = False, device: str | None = None,
            logger: logging.Logger | logging.LoggerAdapter | None = None, label: str | None = None) -> ArtifactRef:
        """:func:`run_stage` with this stage's function and options (what the Prefect task calls)."""
        return run_stage(store, self.name, self.fn, inputs or {}, config, self.kind, tracker, force=force,
                         device=device, on_oom=self.on_oom, logger=logger, label=label)


def make_stage_task(stage_name: str, fn: StageFn, kind: ArtifactKind, *, retries: int = 2,
                    retry_delay_seconds: float | Sequence[float] | None = None, tags: Sequence[str] = (),
                    on_oom: OomHook | None = None, timeout_seconds: float | None = None) -> Stage:
    """Declare stage ``stage_name`` (see :class:`Stage`); ``flows.orchestration.PipelineRun`` runs its task."""
    delays = retry_delay_seconds if retry_delay_seconds is None or isinstance(retry_delay_seconds, int | float) \
        else tuple(float(d) for d in retry_delay_seconds)
    return Stage(stage_name, fn, kind, tags=tuple(tags), retries=retries, retry_delay_seconds=delays,
                 on_oom=on_oom, timeout_seconds=timeout_seconds)
