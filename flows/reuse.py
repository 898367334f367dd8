"""``evaluate_flow`` (``ddflow evaluate``): any synthetic set evaluated beside its random baseline.

``evaluate_flow`` evaluates an existing synthetic-set artifact (made by ddflow, or by another tool and
ingested) against a dataset artifact under a config's evaluation recipe, with the random-subset
baseline of the same IPC of stored images (an NCFM ``factor`` 2 set: its mosaics, not their decoded crops);
both go through the same cached stages as ``distill_flow``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import flow

from ddcore.data.artifact import DatasetArtifact
from ddcore.evaluate.metrics import stored_ipc
from flows.config import load_config
from flows.execute import PlanExecutor
from flows.orchestration import PipelineRun, default_root
from flows.plan import INGEST, STAGES, build_evaluate_plan, expand_force
from tasks.evaluate import check_evaluation_inputs
from tasks.report import read_report
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.store import ArtifactStore
from tasks.runtime.tracking import Tracker


def external_ref(art: DatasetArtifact, kind: str) -> ArtifactRef:
    """A reference to a (verified) dataset artifact that no stage of this store produced."""
    return ArtifactRef(uri=art.uri, sha256=art.digest, stage="external", key=art.digest[:20], kind=kind)  # type: ignore[arg-type]


@flow(name="ddflow-evaluate", log_prints=True)
def evaluate_flow(synthetic: str, dataset: str, config_path: str, overrides: list[str] | None = None,
                  root: str | None = None, force: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``synthetic`` on ``dataset``'s test split under the config's recipe; returns the run summary
    (``results`` holds the one row, labelled with the set's method; ``stages`` the executed nodes)."""
    cfg = load_config(config_path, overrides)
    store = ArtifactStore(default_root(root))
    tracker = Tracker.for_store(store, cfg.tracking.experiment, cfg.tracking.uri) if cfg.tracking.enabled \
        else Tracker.disabled()
    syn_art, data_art = check_evaluation_inputs(synthetic, dataset)
    syn, data = external_ref(syn_art, "synthetic"), external_ref(data_art, "dataset")
    extra = syn_art.meta.extra
    ipc = stored_ipc(extra, int(extra.get("ipc") or 1))  # the baseline matches the stored images (DD-Ranking)
    label = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(extra.get("method") or "external")) or "external"
    plan = build_evaluate_plan(cfg, ipc=ipc, label=label)
    t0 = time.perf_counter()
    with PipelineRun(store, tracker=tracker, run_name=plan.name, force=expand_force(force), stages=STAGES) as run:
        ex = PlanExecutor(run, device=cfg.device, runner=cfg.runner, given={INGEST: data, "synthetic": syn})
        refs = ex.execute(plan.nodes)
        report = read_report(refs["report"].uri)
        tracker.log_pipeline_results(report["results"])
        status = tracker.status()
    return {"run": plan.name, "config_digest": cfg.digest(), "results": report["results"],
            "ior_baseline": report.get("ior_baseline"), "stages": ex.timeline, "report": refs["report"].uri,
            "seconds": round(time.perf_counter() - t0, 3), "tracking": status}
