"""The pipeline without orchestration: the run plan's stage functions called directly, no Prefect, no
MLflow, no artifact store.

:func:`run_direct` executes the same :class:`flows.plan.Plan` as ``flows.distill.run_config``, calling each
node's stage function (``tasks/<stage>.py``, the very code the Prefect task runs) with a plain
:class:`~tasks.runtime.stage.StageContext` (no tracking) and a folder ``root/<stage>/<n>``. An output's
digest is computed as the store computes it (the dataset manifest digest, else the folder's tree digest),
because stages record their inputs' digests in what they write; so the sets, accuracies and digests must
equal the flow's ``summary.json``. A node whose stage, config and input digests were seen before in the
run is not run again (as the flow finds it cached).

Left out, because they exist only for the orchestration: the store (locks, ``ref.json``, verification,
atomic publish), MLflow (runs, metrics, logged grids), Prefect (tasks, futures, result persistence, the
temporary API server) and the fan-out over GPUs. As in the flow, ``flow`` nodes run in the calling thread
and the rest in one worker thread (the thread runner has one worker without GPUs): where work runs does not
change results, but it changes speed on a loaded machine, so the placement is kept equal.

Prefect-free on purpose: importing this module never imports prefect or mlflow.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from flows.config import RunConfig, load_config
from flows.plan import INGEST, REPORT, Node, build_plan
from flows.runners import assign_devices
from tasks import get_stage
from tasks.report import read_report
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, call_stage, stage_seed
from tasks.runtime.store import output_digest, stage_key

log = logging.getLogger("ddflow.direct")


resolve_config = load_config  # the config as ``ddflow run`` reads it (flows.config imports no Prefect)


class DirectExecutor:
    """Runs plan nodes by calling their stage functions; outputs under ``root/<stage>/<n>``."""

    def __init__(self, cfg: RunConfig, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self.device = assign_devices(1)[0] if cfg.device == "auto" else cfg.device
        self.results: dict[str, Future | ArtifactRef] = {}
        self.timeline: list[dict[str, Any]] = []
        self._done: dict[str, ArtifactRef] = {}  # stage key -> output (a repeat is "cached")
        self._count = 0

    def run_node(self, node: Node) -> ArtifactRef:
        """Run one node now (its inputs must be finished) and record it in the timeline."""
        t0 = time.perf_counter()
        inputs = {name: _value(self.results[src]) for name, src in node.inputs.items()}
        stage = get_stage(node.stage)
        key = stage_key(stage.name, node.config, inputs)
        cached = key in self._done
        if not cached:
            self._count += 1
            out = self.root / stage.name / f"{self._count:03d}"
            ckpt = self.root / "_ckpt" / stage.name / f"{self._count:03d}"
            out.parent.mkdir(parents=True, exist_ok=True)
            ckpt.mkdir(parents=True, exist_ok=True)
            device = "cpu" if node.placement == "cpu" else self.device
            ctx = StageContext(stage=stage.name, key=key, checkpoint_dir=str(ckpt), device=device,
                               seed=stage_seed(node.config, key), logger=log)
            call_stage(stage.fn, inputs, node.config, str(out), ctx)
            sha = output_digest(*fsio.get_fs(str(out)), str(out))[0]  # the digest the store would publish
            self._done[key] = ArtifactRef(uri=str(out), sha256=sha, stage=stage.name, key=key,
                                          kind=stage.kind)
        self.timeline.append({"name": node.id, "cached": cached, "seconds": round(time.perf_counter() - t0, 3)})
        return self._done[key]

    def execute(self, nodes: tuple[Node, ...] | list[Node], pool: ThreadPoolExecutor) -> None:
        """``flow`` nodes in this thread, the others submitted in order to ``pool`` (one worker)."""
        for node in nodes:
            if node.id in self.results:
                continue
            if node.placement == "flow":
                for src in node.inputs.values():
                    _value(self.results[src])
                self.results[node.id] = self.run_node(node)
            else:
                self.results[node.id] = pool.submit(self.run_node, node)
        for value in list(self.results.values()):
            _value(value)


def _value(v: Future | ArtifactRef) -> ArtifactRef:
    return v.result() if isinstance(v, Future) else v


def run_direct(cfg: RunConfig, root: Path) -> dict[str, Any]:
    """The flow's plan on :class:`DirectExecutor`; returns the report's rows and the stage timeline."""
    t_start = time.perf_counter()
    ex = DirectExecutor(cfg, root)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct-branches") as pool:
        ex.execute([build_plan(cfg, num_classes=None).node(INGEST)], pool)
        data = _value(ex.results[INGEST])
        plan = build_plan(cfg, num_classes=open_artifact(data.uri, verify="none").meta.num_classes)
        ex.execute(plan.nodes, pool)
    report = read_report(_value(ex.results[REPORT]).uri)
    return {"config_digest": cfg.digest(), "results": report["results"], "stages": ex.timeline, "device": ex.device,
            "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t_start, 3)}


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: ``python -m benchmarks.direct_pipeline CONFIG ROOT OUT_JSON [--set k=v ...]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("config")
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    res = run_direct(resolve_config(args.config, args.overrides), Path(args.root))
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
