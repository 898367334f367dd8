"""Two ``ddflow run`` processes on one artifact root at the same time: the per-key lock makes each stage
run once, and both finish with the same results; a lock left by a killed holder is taken over by a run
that was waiting for it."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from faultkit import cli_env, fingerprint, kill_group, start_cli, temp_leftovers, wait_for

from tasks.runtime.store import ArtifactStore

pytest_plugins = ["faultkit"]

COMPUTING = re.compile(r"stage (\S+): computing \(key ([0-9a-f]+)\)")


def _finish(procs: list[subprocess.Popen], timeout: float = 500) -> list[int]:
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            kill_group(p)
            codes.append(-9)
    return codes


def _table(log: str) -> list[str]:
    """The rows of the results table the CLI printed."""
    return [line for line in log.splitlines() if line.startswith("│")]


@pytest.mark.slow  # ~150 s; tests/test_orchestration_concurrency.py checks one key computed once in 7 s
def test_two_runs_at_once_compute_each_stage_once(fault_config: Path, prefect_homes: list[Path],
                                                  subprocess_reference: Path, tmp_path: Path) -> None:
    """Both processes start together (the ingest-lock holder lingers 8 s so the other must wait): every stage
    key is computed by exactly one of them, the other reuses it, both exit 0 printing the same results, and
    the outputs equal an undisturbed run's."""
    root = tmp_path / "root"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_cli(fault_config, root, cli_env(home, DDFLOW_FAULT_SLEEP="ingest:before:8"), log)
             for home, log in zip(prefect_homes, logs, strict=True)]
    codes = _finish(procs)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], [t[-3000:] for t in texts]
    runs = Counter(m.groups() for t in texts for m in COMPUTING.finditer(t))
    published = {(r.ref.stage, r.ref.key) for r in ArtifactStore(root).records()}
    assert set(runs) == published and set(runs.values()) == {1}, runs
    assert sum(t.count("computed meanwhile by another run") for t in texts) >= 1
    assert _table(texts[0]) == _table(texts[1]) and _table(texts[0])
    assert temp_leftovers(root) == []
    assert fingerprint(root) == fingerprint(subprocess_reference)


@pytest.mark.slow
def test_waiting_run_takes_over_the_lock_of_a_killed_holder(fault_config: Path, prefect_homes: list[Path],
                                                            subprocess_reference: Path, tmp_path: Path) -> None:
    """Run B waits for the ingest lock held by run A; A is killed with the output half-published; B gets the
    lock at once, rebuilds ingest and finishes with the outputs of an undisturbed run."""
    root = tmp_path / "root"
    holder = start_cli(fault_config, root, cli_env(prefect_homes[0], DDFLOW_FAULT_SLEEP="ingest:after:300"),
                       tmp_path / "a.log")
    wait_for(lambda: list(root.glob("ingest/.*.tmp-*/dataset.json")), holder, "run A writing ingest")
    waiter_log = tmp_path / "b.log"
    waiter = start_cli(fault_config, root, cli_env(prefect_homes[1]), waiter_log)
    wait_for(lambda: f"held by pid {holder.pid}" in waiter_log.read_text(), waiter, "run B waiting for the lock")
    kill_group(holder)
    assert _finish([waiter]) == [0], waiter_log.read_text()[-3000:]
    assert temp_leftovers(root) == []
    assert fingerprint(root) == fingerprint(subprocess_reference)
