"""The run plan as data (flows/plan.py) and ``ddflow plan``: nodes, inputs, report rows and node states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddcore.errors import ConfigError
from flows.config import RunConfig
from flows.plan import build_plan, expand_force
from flows.plan_view import node_states, to_mermaid
from tasks.runtime.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["orchestration_fixtures"]


def _cfg(**extra: object) -> RunConfig:
    data = {"name": "p", "ipcs": [1, 2], "data": {"source": {"kind": "fashion_mnist", "root": "/nowhere"}},
            "methods": {"random": {"width": 8}, "dm": {"iterations": 2, "width": 8},
                        "hdd": {"iterations": 2, "width": 8}, "ddoq": {}},
            "core_set": {"fraction": 0.5, "width": 8, "methods": ["hdd"]},
            "prune": {"fraction": 0.5, "width": 8, "methods": ["dm"]},
            "soft_labels": {"methods": ["ddoq"]},
            "evaluation": {"epochs": 1, "width": 8, "num_eval": 2}, **extra}
    return RunConfig.from_mapping(data)


def test_every_input_is_a_node_planned_before_its_consumer_and_ids_are_unique() -> None:
    """Nodes come in submission order: each input names an earlier node; no id appears twice."""
    plan = build_plan(_cfg(), num_classes=10)
    seen: set[str] = set()
    for node in plan.nodes:
        assert set(node.inputs.values()) <= seen, node.id
        assert node.id not in seen
        seen.add(node.id)
    assert plan.nodes[0].stage == "ingest" and plan.nodes[-1].stage == "report"


def test_plan_has_the_shared_stages_and_one_branch_per_method_and_ipc() -> None:
    """Core set, VAE, latents and teacher appear once; every (method, IPC) has a distillation and an evaluation
    with num_eval rounds; the latent method is fed the VAE and latents, the core-set method the features."""
    plan = build_plan(_cfg(), num_classes=10)
    stages = [n.stage for n in plan.nodes]
    for shared in ("ingest", "extract_features", "train_vae", "encode_latents", "train_teacher", "report"):
        assert stages.count(shared) == 1
    for name in ("random", "dm", "hdd", "ddoq"):
        for ipc in (1, 2):
            assert f"distill/{name}/ipc{ipc}" in plan.ids
            assert {f"evaluate/{name}/ipc{ipc}/round0", f"evaluate/{name}/ipc{ipc}/round1"} <= set(plan.ids)
    assert plan.node("distill/ddoq/ipc1").inputs == {"dataset": "ingest", "latents": "encode_latents",
                                                     "vae": "train_vae"}
    assert plan.node("distill/hdd/ipc1").inputs == {"dataset": "ingest", "features": "extract_features"}
    assert plan.node("distill/dm/ipc1").inputs == {"dataset": "ingest"}


def test_report_rows_pair_each_set_with_its_baseline_hard_row_and_source() -> None:
    """The plan's typed rows: a +soft row is compared with the soft baseline and takes HLR from the hard-label
    evaluation of the same set; a pruned row names the row of the set it was pruned from (the directly distilled
    dm@2 at IPC 1; the unpruned dm@4, which gets its own row and baseline, at IPC 2)."""
    plan = build_plan(_cfg(), num_classes=10)
    rows = {(r.label, r.ipc): r for r in plan.rows}
    soft = rows["ddoq+soft", 1]
    assert soft.baseline == "baseline/ipc1/soft" and soft.hard == "evaluate/ddoq/ipc1"
    assert soft.synthetic == rows["ddoq", 1].synthetic == "distill/ddoq/ipc1"
    assert rows["dm+prune", 1].pruned_from == ("dm", 2) and rows["dm+prune", 2].pruned_from == ("dm", 4)
    assert rows["dm", 4].baseline == "baseline/ipc4" and rows["dm", 4].synthetic == "distill/dm/ipc4"
    assert plan.node("prune/dm/ipc2->1").inputs == {"synthetic": "distill/dm/ipc2"}
    assert plan.ids.count("distill/dm/ipc2") == 1  # pruned from and distilled directly: one node
    report = plan.nodes[-1]
    assert report.config.rows == plan.rows
    assert set(report.inputs) == {v for r in plan.rows for v in (r.evaluation, r.synthetic, r.baseline, r.hard)
                                  if v is not None}


def test_class_groups_become_parts_and_a_merge_once_the_class_count_is_known() -> None:
    """class_groups 3 over 10 classes: dm/hdd distillations become 3 part nodes + a merge node fed by them;
    selection and latent methods stay single; without the class count each stays one node."""
    cfg = _cfg(class_groups=3)
    plan = build_plan(cfg, num_classes=10)
    merge = plan.node("distill/dm/ipc1")
    assert merge.stage == "merge" and merge.config.parts == 3
    parts = [plan.node(src) for name, src in sorted(merge.inputs.items()) if name.startswith("part-")]
    assert [list(p.config.classes) for p in parts] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert plan.node("distill/random/ipc1").stage == "distill"
    assert build_plan(cfg, num_classes=None).node("distill/dm/ipc1").stage == "distill"


def test_soft_label_recipe_reaches_the_soft_rows_and_their_baseline_only() -> None:
    """soft_labels.evaluation replaces recipe fields of the +soft rounds and the soft baseline's rounds (and their
    protocol label says so); the hard-label rows and baseline keep the run's evaluation; a misspelt field is one
    error line naming the section."""
    relabel = {"optimizer": "adamw", "lr": 0.001, "lr_schedule": "cosine", "cutmix": True}
    plan = build_plan(_cfg(soft_labels={"methods": ["ddoq"], "evaluation": relabel}), num_classes=10)
    def recipe(node_id: str):  # an evaluation round holds its set's config, a baseline round its baseline's
        cfg = plan.node(node_id).config
        return (cfg.evaluate if node_id.startswith("evaluate/") else cfg.baseline).eval

    for node_id in ("evaluate/ddoq+soft/ipc1/round0", "baseline/ipc2/soft/round1"):
        ev = recipe(node_id)
        assert {k: getattr(ev, k) for k in relabel} == relabel and ev.width == 8 and ev.epochs == 1
        assert "optimizer=adamw" in ev.label and ev.soft_label_temperature == 20.0
    for node_id in ("evaluate/ddoq/ipc1/round0", "baseline/ipc2/round1"):
        ev = recipe(node_id)
        assert ev.optimizer == "sgd" and not ev.cutmix
    with pytest.raises(ConfigError, match=r"^soft_labels.evaluation: unknown key 'optimiser'"):
        _cfg(soft_labels={"methods": ["ddoq"], "evaluation": {"optimiser": "adamw"}})


def test_force_names_are_checked_and_aggregates_bring_their_rounds() -> None:
    """--force evaluate also forces evaluate_round; an unknown stage is one error line listing the stages."""
    assert expand_force(["evaluate"]) == ["evaluate", "evaluate_round"]
    with pytest.raises(ConfigError, match="unknown stage 'distil'; choose from ingest"):
        expand_force(["distil"])


def test_states_of_an_empty_store_are_to_compute_and_forced_downstream(tmp_path: Path) -> None:
    """In an empty store every node is 'to compute'; forcing distill marks each distillation and everything fed
    by one as forced, and leaves the baselines (fed only by ingest) to compute."""
    plan = build_plan(_cfg(), num_classes=10)
    store = ArtifactStore(tmp_path)
    assert {s.state for s in node_states(plan, store)} == {"to compute"}
    states = {s.id: s.state for s in node_states(plan, store, ["distill"])}
    assert states["distill/dm/ipc1"] == states["evaluate/dm/ipc1/round0"] == states["report"] == "forced"
    assert states["baseline/ipc1/round0"] == "to compute"
    chart = to_mermaid(node_states(plan, store))
    assert chart.startswith("flowchart LR") and chart.count("-->") == sum(
        len(set(n.inputs.values())) for n in plan.nodes)


def _tiny(path: Path, fmnist: Path) -> Path:
    path.write_text(f"""
name: tiny
ipcs: [1]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  random: {{width: 8}}
  dm: {{iterations: 2, width: 8, batch_real: 8, checkpoint_every: 0}}
evaluation: {{epochs: 1, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    return path


def _plan_json(cfg: Path, root: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", str(cfg), "--root", str(root), "--format",
                          "json", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_ddflow_plan_shows_all_to_compute_then_all_cached_after_the_run(fake_fmnist: Path, tmp_path: Path,
                                                                        prefect_harness: None) -> None:
    """Through the real CLI: before the run every node is 'to compute'; the flow executes exactly the plan's
    nodes (its summary lists the same ids); afterwards every node is 'cached' with the key the flow used; with
    --force distill the distillation and what it feeds are 'forced'; distill_on_runner (the nightly deployment's
    entrypoint) on a thread runner finds every stage cached."""
    from flows.distill import distill_flow, distill_on_runner

    cfg_path = _tiny(tmp_path / "c.yaml", fake_fmnist)
    before = _plan_json(cfg_path, tmp_path / "root")
    assert before["counts"] == {"cached": 0, "to compute": len(before["nodes"]), "forced": 0}
    summary = distill_flow(str(cfg_path), [], str(tmp_path / "root"))
    assert [s["name"] for s in summary["stages"]] == [n["id"] for n in before["nodes"]]
    after = _plan_json(cfg_path, tmp_path / "root")
    assert after["counts"]["cached"] == len(after["nodes"]) == len(before["nodes"])
    dm = next(r for r in summary["results"] if r["method"] == "dm")
    assert next(n for n in after["nodes"] if n["id"] == "distill/dm/ipc1")["key"] in dm["artifact"]
    forced = {n["id"]: n["state"] for n in _plan_json(cfg_path, tmp_path / "root", "--force", "distill")["nodes"]}
    assert forced["distill/dm/ipc1"] == forced["evaluate/dm/ipc1"] == forced["report"] == "forced"
    assert forced["ingest"] == forced["baseline/ipc1"] == "cached"
    again = distill_on_runner(str(cfg_path), ["runner.kind=threads"], str(tmp_path / "root"))
    assert all(s["cached"] for s in again["stages"]) and again["results"] == summary["results"]


def test_ddflow_plan_refuses_an_unknown_format_in_one_line(tmp_path: Path) -> None:
    """A bad --format is one error line and exit code 2."""
    cfg = _tiny(tmp_path / "c.yaml", tmp_path)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", str(cfg), "--format", "dot"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "unknown format 'dot'" in errors[0]
    assert "Traceback" not in out.stderr
