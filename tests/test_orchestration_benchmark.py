"""benchmarks/orchestration.py: its direct ddcore path does the same work as the flow (same accuracies,
same synthetic-set digests), and the benchmark end to end (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures"]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.direct_pipeline import resolve_config, run_direct  # noqa: E402
from benchmarks.orchestration import compare_accuracies  # noqa: E402
from benchmarks.orchestration import main as benchmark_main  # noqa: E402


def _config(path: Path, fmnist: Path) -> Path:
    path.write_text(f"""
name: bench
ipcs: [1]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  random: {{width: 8}}
  dm: {{iterations: 3, width: 8, batch_real: 8, checkpoint_every: 2}}
  hdd: {{iterations: 2, width: 8, batch_real: 8, lr_img: 0.1}}
core_set: {{fraction: 0.5, width: 8, methods: [hdd]}}
prune: {{fraction: 0.5, width: 8, methods: [dm]}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    return path


def test_direct_path_gives_the_flows_accuracies(fake_fmnist: Path, tmp_path: Path, prefect_harness: None) -> None:
    """On a tiny config with a core set, post-pruning and the random baseline, ``run_direct`` (no Prefect,
    MLflow or store) and ``distill_flow`` give the same rows: equal accuracies and baseline accuracies and
    equal synthetic-set digests, under the same config digest."""
    from flows.distill import distill_flow

    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    summary = distill_flow(str(cfg), [], str(tmp_path / "flow"))
    direct = run_direct(resolve_config(str(cfg)), tmp_path / "direct")
    check = compare_accuracies(summary["results"], direct["results"])
    assert check["equal"], check["mismatches"]
    assert check["rows_compared"] == 5  # random, dm, dm+prune, dm@2 (the unpruned set), hdd
    assert direct["config_digest"] == summary["config_digest"]
    assert not any(st["cached"] for st in direct["stages"] if st["name"].startswith("distill/dm/"))


def test_compare_accuracies_reports_each_difference() -> None:
    """A changed accuracy, a changed set digest and a row present on one side only are each reported."""
    row = {"method": "dm", "ipc": 1, "acc_mean": 0.5, "acc_std": 0.1, "random_mean": 0.4, "random_std": 0.0,
           "digest": "a"}
    other = {**row, "method": "hdd"}
    check = compare_accuracies([row, other], [{**row, "acc_mean": 0.5 + 1e-9, "digest": "b"}])
    fields = sorted((m["row"][0], m["field"]) for m in check["mismatches"])
    assert fields == [("dm", "acc_mean"), ("dm", "set digest"), ("hdd", "row")] and not check["equal"]
    assert compare_accuracies([row], [dict(row)]) == {"rows_compared": 1, "equal": True, "mismatches": []}


@pytest.mark.slow
def test_benchmark_end_to_end(fake_fmnist: Path, tmp_path: Path) -> None:
    """The script runs (a) ddflow run, (b) the direct path, (c) the cached re-run: equal accuracies, every
    stage of (c) cached, overhead fields and the JSON file written."""
    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    out = tmp_path / "res.json"
    res = benchmark_main(["--config", str(cfg), "--out", str(out), "--tmp-dir", str(tmp_path),
                          "--prefect-home", str(tmp_path / "prefect-home")])
    assert res["accuracy_check"]["equal"] and res["config_digest_equal"]
    assert res["cached"]["all_cached"] and res["cached"]["same_results"]
    assert res["flow"]["wall_s"] > res["flow"]["flow_seconds"] > 0 and "overhead_pct" in res
    assert json.loads(out.read_text())["config_digest"] == res["config_digest"]
