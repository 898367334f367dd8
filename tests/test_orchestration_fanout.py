"""Fan-out in the flow: a distillation split into class-group tasks plus a merge gives the set of the
single-task run, and evaluation runs one task per round (seed)."""

from __future__ import annotations

from pathlib import Path

import torch

pytest_plugins = ["orchestration_fixtures"]


def _config(path: Path, fmnist: Path) -> Path:
    path.write_text(f"""
name: fan
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  dm: {{iterations: 3, width: 8, batch_real: 8, checkpoint_every: 0}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    return path


def test_class_groups_merge_to_the_single_task_set(fake_fmnist: Path, tmp_path: Path, prefect_harness: None) -> None:
    """class_groups: 3 runs DM as three class-group tasks and a merge; the merged set has the single task's
    labels and images (to float tolerance) and records its groups; each evaluation round is its own task; every
    stage's peak RSS is in the summary; the merged set's lineage leads through its three parts to the ingested data."""
    from ddcore.data.synthetic_io import load_synthetic
    from flows.distill import distill_flow

    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    one = distill_flow(str(cfg), [], str(tmp_path / "one"))
    three = distill_flow(str(cfg), ["class_groups=3"], str(tmp_path / "three"))
    names = [s["name"] for s in three["stages"]]
    assert [n for n in names if n.startswith("distill/dm/ipc2/")] == [
        "distill/dm/ipc2/classes0-2", "distill/dm/ipc2/classes3-6", "distill/dm/ipc2/classes7-9"]
    assert "distill/dm/ipc2" in names and not any(s["cached"] for s in three["stages"])
    # every computed stage, in the flow or submitted to the runner, reports its peak RSS in the summary
    assert all(s["peak_rss_mb"] > 0 for s in three["stages"])
    assert [n for n in names if n.startswith("evaluate/dm/ipc2/")] == ["evaluate/dm/ipc2/round0",
                                                                       "evaluate/dm/ipc2/round1"]
    assert [n for n in names if n.startswith("baseline/ipc2/")] == ["baseline/ipc2/round0", "baseline/ipc2/round1"]
    a = load_synthetic(next(r["artifact"] for r in one["results"] if r["method"] == "dm"))
    b = load_synthetic(next(r["artifact"] for r in three["results"] if r["method"] == "dm"))
    assert torch.equal(a.labels, b.labels) and a.config == b.config
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
    assert b.extra["class_groups"] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]] and len(b.extra["parts"]) == 3
    assert next(r for r in three["results"] if r["method"] == "dm")["n_eval"] == 2
    from tasks.runtime.lineage import build_lineage, lineage_json, resolve_record
    from tasks.runtime.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "three"))
    dm_digest = next(r["digest"] for r in three["results"] if r["method"] == "dm")
    tree = lineage_json(build_lineage(store, resolve_record(store, dm_digest)))  # lineage of the merged set
    assert tree["stage"] == "merge"
    assert sorted(c["input_name"] for c in tree["inputs"] if c["stage"] == "distill") == ["part-000", "part-001",
                                                                                         "part-002"]
    assert all(c["inputs"][0]["stage"] == "ingest" for c in tree["inputs"] if c["stage"] == "distill")


def test_soft_label_rows_use_the_teacher_trained_on_real_data(fake_fmnist: Path, tmp_path: Path,
                                                               prefect_harness: None) -> None:
    """With a soft_labels section, a teacher is trained once on the real data and every listed method's set is
    evaluated a second time under its KL targets (row ``<method>+soft``, same set), paired with a random
    baseline under the same teacher; the hard-label rows are unchanged."""
    import json

    from flows.distill import distill_flow

    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    soft = ["soft_labels={teacher: {width: 8, epochs: 2}, temperature: 4.0, methods: [dm]}"]
    hard = distill_flow(str(cfg), [], str(tmp_path / "hard"))
    both = distill_flow(str(cfg), soft, str(tmp_path / "soft"))
    rows = {r["method"]: r for r in both["results"]}
    assert set(rows) == {"dm", "dm+soft"} and rows["dm+soft"]["digest"] == rows["dm"]["digest"]
    assert rows["dm+soft"]["labels"] == "teacher" and rows["dm"]["labels"] == "set"
    assert rows["dm"]["acc_mean"] == next(r for r in hard["results"] if r["method"] == "dm")["acc_mean"]
    names = [s["name"] for s in both["stages"]]
    assert names.count("train_teacher") == 1 and "baseline/ipc2/soft" in names
    bases = [json.loads(p.read_text()) for p in (tmp_path / "soft" / "baseline").glob("*/results.json")]
    assert sorted(b["labels"] for b in bases) == ["hard", "teacher"]
    assert rows["dm+soft"]["random_mean"] == next(b["acc_mean"] for b in bases if b["labels"] == "teacher")
