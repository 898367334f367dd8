"""The Prefect executor of a :class:`~flows.plan.Plan`: each node becomes a cached stage task.

``flow`` nodes run in the flow's thread on the run's device; ``branch`` and ``cpu`` nodes are submitted to
the flow's task runner (futures feed their consumers directly), branch nodes round robin over the visible
GPUs (``cpu`` without one). A ``flow`` node fed by submitted work (the report) first waits for everything
submitted, so the timeline lists the branches in submission order before it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

from flows.orchestration import PipelineRun
from flows.plan import Node
from flows.runners import RunnerConfig, assign_devices, cuda_devices, stage_options
from tasks import get_stage
from tasks.runtime.refs import ArtifactRef


class PlanExecutor:
    """Runs plan nodes through one :class:`PipelineRun`; ``timeline`` holds name / cached / seconds per node."""

    def __init__(self, run: PipelineRun, *, device: str, runner: RunnerConfig,
                 given: dict[str, ArtifactRef] | None = None) -> None:
        """``device``: the config's ``device`` (``auto``: the visible GPUs, else the CPU; or a fixed device)."""
        self.run, self.runner = run, runner
        self.device = assign_devices(1)[0] if device == "auto" else device
        self._devices = itertools.cycle((cuda_devices() or ["cpu"]) if device == "auto" else [device])
        self.results: dict[str, Any] = dict(given or {})  # node id -> ArtifactRef or a future of one
        self.timeline: list[dict[str, Any]] = []
        self._pending: list[tuple[str, Any]] = []

    def execute(self, nodes: Iterable[Node]) -> dict[str, ArtifactRef]:
        """Run or submit every node not already done; wait for all; return node id -> output ref."""
        for node in nodes:
            if node.id not in self.results:
                self._start(node)
        self.collect()
        return {k: v for k, v in self.results.items() if isinstance(v, ArtifactRef)}

    def _start(self, node: Node) -> None:
        stage = get_stage(node.stage)
        inputs = {name: self.results[src] for name, src in node.inputs.items()}
        if node.placement == "flow":
            if any(not isinstance(v, ArtifactRef) for v in inputs.values()):
                self.collect()
                inputs = {name: self.results[src] for name, src in node.inputs.items()}
            t0 = time.perf_counter()
            ref = self.results[node.id] = self.run.run(stage, node.config, inputs, device=self.device,
                                                       label=run_label(stage.name, node.id))
            cached = self.run.outcomes.get(stage.name) == "cached"
            rec = None if cached else self.run.store.read_record_at(ref.uri)
            self.timeline.append({"name": node.id, "cached": cached, "seconds": round(time.perf_counter() - t0, 3),
                                  "peak_rss_mb": 0.0 if rec is None else rec.peak_rss_mb,
                                  "node": None if rec is None else rec.node})
            return
        device = "cpu" if node.placement == "cpu" else next(self._devices)
        with stage_options(self.runner, gpu="gpu" in stage.tags):
            future = self.run.submit(stage, node.config, inputs, device=device, label=run_label(stage.name, node.id))
        self.results[node.id] = future
        self._pending.append((node.id, future))

    def collect(self) -> None:
        """Wait for the submitted nodes in submission order and record them in the timeline."""
        pending, self._pending = self._pending, []
        for node_id, future in pending:
            ref = self.run.result(future)
            cached = future.state.name == "Cached"
            rec = self.run.store.read_record_at(ref.uri)
            seconds = 0.0 if cached or rec is None else round(rec.duration_s, 3)
            peak = 0.0 if cached or rec is None else rec.peak_rss_mb
            self.timeline.append({"name": node_id, "cached": cached, "seconds": seconds, "peak_rss_mb": peak,
                                  "node": None if cached or rec is None else rec.node})  # the Ray node, if any
            self.results[node_id] = ref


def run_label(stage: str, node_id: str) -> str:
    """The name of a node's Prefect task run and MLflow run: the stage, then the node id after its first part
    (``evaluate_round`` + ``evaluate/dm/ipc10/round1`` -> ``evaluate_round dm ipc10 round1``)."""
    return " ".join([stage, *node_id.split("/")[1:]])
