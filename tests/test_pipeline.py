"""The whole pipeline through the real CLI, Prefect (temporary server) and MLflow (SQLite):
summary schema, a cached re-run executes no stage, and a SIGKILL during distillation resumes to the
same synthetic sets as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DDFLOW = [sys.executable, "-m", "flows.cli"]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def _env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)
    return env


def _config(path: Path, fmnist: Path, *, iterations: int = 4, checkpoint_every: int = 2) -> Path:
    path.write_text(f"""
name: t
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  random: {{width: 8}}
  dm: {{iterations: {iterations}, width: 8, batch_real: 8, checkpoint_every: {checkpoint_every}, log_every: 1}}
  hdd: {{iterations: 3, width: 8, batch_real: 8, lr_img: 0.1}}
core_set: {{fraction: 0.5, width: 8, methods: [hdd]}}
prune: {{fraction: 0.5, width: 8, methods: [dm]}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
""")
    return path


def _run(cfg: Path, root: Path, prefect_home: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DDFLOW, "run", str(cfg), "--root", str(root), *extra], cwd=REPO, env=_env(prefect_home),
                          capture_output=True, text=True, timeout=600)


def _summary(root: Path) -> dict:
    return json.loads((root / "runs" / "t" / "summary.json").read_text())


def test_pipeline_runs_then_a_cached_rerun_executes_no_stage(fake_fmnist: Path, tmp_path: Path,
                                                              prefect_home: Path) -> None:
    """First run computes every stage and writes the documented summary; the second computes none."""
    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    first = _run(cfg, tmp_path / "root", prefect_home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    s1 = _summary(tmp_path / "root")
    assert set(s1) >= {"run", "config_digest", "results", "stages"}
    rows = {(r["method"], r["ipc"]) for r in s1["results"]}
    assert rows == {("random", 2), ("dm", 2), ("dm+prune", 2), ("dm", 4), ("hdd", 2)}  # dm@4: the unpruned set
    keys = {"method", "ipc", "acc_mean", "acc_std", "n_eval", "random_mean", "random_std", "ior", "hlr", "lrs",
            "seconds", "artifact", "digest", "ior_std", "hlr_std", "lrs_std", "hlr_from", "stored_ipc",
            "images_per_class", "baseline_ipc", "pruned_from"}
    for r in s1["results"]:
        assert keys <= set(r) and 0.0 <= r["acc_mean"] <= 1.0 and r["n_eval"] == 2
    assert not any(st["cached"] for st in s1["stages"])
    second = _run(cfg, tmp_path / "root", prefect_home)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = _summary(tmp_path / "root")
    assert all(st["cached"] for st in s2["stages"]) and len(s2["stages"]) == len(s1["stages"])
    assert "Cached(type=COMPLETED)" in second.stdout + second.stderr
    assert [r["digest"] for r in s2["results"]] == [r["digest"] for r in s1["results"]]
    db = sqlite3.connect(tmp_path / "root" / "mlflow.db")
    parents = db.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                         "where t.key = 'ddflow.role' and t.value = 'pipeline'").fetchone()[0]
    nested = db.execute("select count(*) from tags where key = 'mlflow.parentRunId'").fetchone()[0]
    assert parents == 2 and nested >= len(s1["stages"])
    dm = next(r for r in s1["results"] if r["method"] == "dm")
    ev = subprocess.run([*DDFLOW, "evaluate", dm["artifact"], "--data", s1["dataset"]["uri"], "--config", str(cfg),
                         "--root", str(tmp_path / "root")], cwd=REPO, env=_env(prefect_home), capture_output=True,
                        text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"{100 * dm['acc_mean']:.1f} ± {100 * dm['acc_std']:.1f}" in ev.stdout  # the cached evaluation
    assert "│ dm " in ev.stdout and "external" not in ev.stdout and "stages: " in ev.stdout  # labelled by its method
    # Tracking: nothing lost, no run left RUNNING, the parent run named in the output.
    assert s1["tracking"]["lost"] == 0 and f"MLflow: run {s1['tracking']['parent_run_id']}" in first.stdout
    statuses = dict(db.execute("select status, count(*) from runs group by status").fetchall())
    assert set(statuses) == {"FINISHED"}, statuses
    # The temporary Prefect server of each command kept its state under the root, not in PREFECT_HOME.
    assert (tmp_path / "root" / "prefect" / "prefect.db").is_file() and not (prefect_home / "prefect.db").exists()
    # ... its flow runs are recorded there, and every command stopped its server when it ended.
    flow_runs = sqlite3.connect(tmp_path / "root" / "prefect" / "prefect.db").execute(
        "select count(*) from flow_run").fetchone()[0]
    assert flow_runs == 3, flow_runs  # run, cached re-run, evaluate
    from orchestration_fixtures import prefect_servers_of

    deadline = time.monotonic() + 20  # a server is told to stop at its command's exit and ends within seconds
    while prefect_servers_of(tmp_path / "root") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not prefect_servers_of(tmp_path / "root")


@pytest.mark.slow  # ~90 s; tests/test_orchestration_flow.py covers --force in 5 s (.ci/run runs it)
def test_force_recomputes_a_stage_and_its_dependants(fake_fmnist: Path, tmp_path: Path, prefect_home: Path) -> None:
    """--force prune recomputes prune and the evaluation of the pruned set, nothing upstream."""
    cfg = _config(tmp_path / "c.yaml", fake_fmnist)
    assert _run(cfg, tmp_path / "root", prefect_home).returncode == 0
    forced = _run(cfg, tmp_path / "root", prefect_home, "--force", "prune")
    assert forced.returncode == 0, forced.stderr[-3000:]
    computed = {st["name"] for st in _summary(tmp_path / "root")["stages"] if not st["cached"]}
    assert "prune/dm/ipc4->2" in computed and "evaluate/dm+prune/ipc2" in computed
    assert not any(n.startswith(("ingest", "distill", "baseline")) for n in computed)


@pytest.mark.slow  # ~140 s; tests/faults/test_fault_kill.py kills other stages in the default run (.ci/run runs it)
def test_sigkill_during_distillation_resumes_to_the_same_sets(fake_fmnist: Path, tmp_path: Path,
                                                              prefect_home: Path) -> None:
    """Killing the run mid-distillation and re-running resumes from the checkpoint and ends with the same
    synthetic-set digests as an uninterrupted run."""
    cfg = _config(tmp_path / "c.yaml", fake_fmnist, iterations=60, checkpoint_every=1)
    ref = _run(cfg, tmp_path / "clean", prefect_home)
    assert ref.returncode == 0, ref.stderr[-3000:]
    root = tmp_path / "killed"
    proc = subprocess.Popen([*DDFLOW, "run", str(cfg), "--root", str(root)], cwd=REPO, env=_env(prefect_home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    ckpts = root / "_checkpoints" / "distill"
    while time.monotonic() < deadline and not list(ckpts.glob("*/loop.pt")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(ckpts.glob("*/loop.pt")), "no checkpoint appeared before the deadline"
    again = _run(cfg, root, prefect_home)
    assert again.returncode == 0, again.stderr[-3000:]
    clean, resumed = _summary(tmp_path / "clean"), _summary(root)
    digests = {(r["method"], r["ipc"]): r["digest"] for r in resumed["results"]}
    assert digests == {(r["method"], r["ipc"]): r["digest"] for r in clean["results"]}
