"""Flow-side driver of stage tasks: store binding, forced recomputation, MLflow parent run, outcomes.

Inside a Prefect flow::

    INGEST = make_stage_task("ingest", ingest_stage, "dataset")
    DISTILL = make_stage_task("distill", distill_stage, "synthetic", tags=("gpu",))

    @flow
    def distill_flow(config_path: str, overrides: list[str] | None = None, root: str | None = None,
                     force: list[str] | None = None):
        cfg = ...
        store = ArtifactStore(default_root(root))
        with PipelineRun(store, tracker=Tracker.for_store(store, cfg.name), force=force or (),
                         run_name=cfg.name, stages=("ingest", "distill")) as run:
            data = run.run(INGEST, cfg.data)
            syn = run.run(DISTILL, cfg.distill, {"dataset": data})

``force`` names stages to recompute; every stage fed (directly or not) by a forced stage is recomputed
too, by passing ``refresh_cache`` and ``force`` to its task. A stage answered from Prefect's cache
(``Cached`` state) gets a ``cached`` nested MLflow run recorded here, so each flow run's parent run
has one nested run per stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from ddcore.config import StageConfig
from ddcore.errors import ConfigError
from flows.roots import default_root  # noqa: F401 - re-exported: flows and tests import it from here
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageError
from tasks.runtime.stop import clear_stop, request_stop
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker

log = logging.getLogger("ddflow.flow")


class PipelineRun:
    """Runs stage tasks of one flow run against one store and tracker.

    Args:
        store: the artifact store.
        tracker: MLflow tracker (default: a no-op one).
        force: stage names to recompute along with everything downstream of them.
        run_name: name of the MLflow parent run.
        params: extra params of the parent run (e.g. the whole config's digest).
        tags: extra tags of the parent run.
        stages: the flow's stage names; when given, unknown names in ``force`` are an error.
    """

    def __init__(self, store: ArtifactStore, *, tracker: Tracker | None = None, force: Iterable[str] = (),
                 run_name: str = "ddflow", params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None, stages: Iterable[str] | None = None) -> None:
        self.store = store
        self.tracker = tracker or Tracker.disabled()
        self.force = {str(s) for s in force}
        if stages is not None:
            names = [str(s) for s in stages]
            unknown = sorted(self.force - set(names))
            if unknown:
                raise ConfigError(f"force: unknown stage {unknown[0]!r}; choose from {', '.join(names)}")
        self.run_name, self.params, self.tags = run_name, dict(params or {}), dict(tags or {})
        self.outcomes: dict[str, str] = {}
        self.refs: dict[str, ArtifactRef] = {}
        self._refreshed: set[str] = set()
        # id(future) -> (stage, config, inputs, future, label)
        self._futures: dict[int, tuple[str, StageConfig, dict[str, Any], Any, str | None]] = {}
        self._results: dict[int, ArtifactRef] = {}

    def __enter__(self) -> PipelineRun:
        clear_stop()
        self.tracker.start()
        self.tracker.start_run(self.run_name, params={"store_root": self.store.root, **self.params},
                               tags={"ddflow.force": ",".join(sorted(self.force)), **self.tags})
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):  # SIGTERM (Prefect), Ctrl-C, cancel
            request_stop(f"the run received {exc_type.__name__}")  # running stages end at their next report
        self.tracker.end_run(failed=exc_type is not None)

    # -- running stages --------------------------------------------------------------------
    def is_forced(self, stage: str, inputs: Mapping[str, Any]) -> bool:
        """``stage`` is forced, or one of its inputs comes from a stage recomputed by force in this run."""
        if stage in self.force:
            return True
        for value in inputs.values():
            upstream = value.stage if isinstance(value, ArtifactRef) else self._futures.get(id(value), ("",))[0]
            if upstream in self._refreshed:
                return True
        return False

    def _bound(self, task: Any, inputs: Mapping[str, Any], label: str | None) -> tuple[Any, bool]:
        stage = str(task.name)
        forced = self.is_forced(stage, inputs)
        if forced:
            self._refreshed.add(stage)
        from tasks.runtime.prefect_task import bind_stage_task

        return bind_stage_task(task, self.store, refresh=forced, label=label), forced

    def run(self, task: Any, config: StageConfig, inputs: Mapping[str, ArtifactRef] | None = None, *,
            device: str | None = None, label: str | None = None) -> ArtifactRef:
        """Run a stage task now (in the flow's thread) and return its output ref. ``label`` names the task run
        and the MLflow run (``distill dm ipc10``).

        Raises:
            StageError: the stage failed (after its retries); the message names the stage.
        """
        inputs = dict(inputs or {})
        bound, forced = self._bound(task, inputs, label)
        state = bound(store=self.store, config=config, inputs=inputs, tracker=self.tracker, force=forced,
                      device=device, label=label, return_state=True)
        return self._finish(str(task.name), state, config, inputs, label)

    def submit(self, task: Any, config: StageConfig, inputs: Mapping[str, Any] | None = None, *,
               device: str | None = None, wait_for: Iterable[Any] | None = None, label: str | None = None) -> Any:
        """Submit a stage task to the flow's task runner; inputs may be refs or futures of other stages.

        Collect the output with :meth:`result`. Wrap the call in ``remote_options(...)`` (Ray) to pass
        per-task resources.
        """
        inputs = dict(inputs or {})
        bound, forced = self._bound(task, inputs, label)
        future = bound.submit(store=self.store, config=config, inputs=inputs, tracker=self.tracker, force=forced,
                              device=device, label=label, wait_for=wait_for)
        self._futures[id(future)] = (str(task.name), config, inputs, future, label)
        return future

    def result(self, future: Any) -> ArtifactRef:
        """Wait for a future from :meth:`submit` and return its output ref (raises :class:`StageError`)."""
        if id(future) in self._results:
            return self._results[id(future)]
        stage, config, inputs, _, label = self._futures[id(future)]
        future.wait()
        resolved = {k: self.result(v) if id(v) in self._futures else v for k, v in inputs.items()}
        ref = self._results[id(future)] = self._finish(stage, future.state, config, resolved, label)
        return ref

    def _finish(self, stage: str, state: Any, config: StageConfig, inputs: Mapping[str, ArtifactRef],
                label: str | None = None) -> ArtifactRef:
        if not state.is_completed():
            self.outcomes[stage] = state.name.lower() if state.name else "failed"
            value = state.result(raise_on_failure=False)
            if isinstance(value, StageError):
                raise value
            if isinstance(value, BaseException):
                raise StageError.wrap(stage, "?", value) from value
            raise StageError(f"stage '{stage}' ended in state {state.name}: {state.message}", stage=stage)
        ref = state.result()
        if state.name == "Cached":
            self.outcomes[stage] = "cached"
            self.tracker.record_cached(stage, ref, label=label)
        else:
            self.outcomes[stage] = "completed"
        self.refs[stage] = ref
        return ref
