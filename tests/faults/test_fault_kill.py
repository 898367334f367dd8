"""``kill -9`` of a running ``ddflow run`` (CLI, Prefect, real stages) during ingest and during evaluation:
the re-run keeps every finished stage and checkpoint, and ends with exactly the outputs of an undisturbed
run. (A kill during distillation is tests/test_pipeline.py's.) Kill windows come from
``DDFLOW_FAULT_SLEEP`` (tasks/runtime/stage.py ``fault_point``)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from faultkit import (
    cli_env,
    computed,
    fingerprint,
    kill_group,
    run_cli,
    stage_flags,
    start_cli,
    temp_leftovers,
    wait_for,
)

from tasks.runtime.locks import pid_alive

pytest_plugins = ["faultkit"]


def test_sigkill_during_ingest_then_rerun(fault_config: Path, prefect_homes: list[Path], subprocess_reference: Path,
                                          tmp_path: Path) -> None:
    """Killed when ingest has written its whole output into its temporary folder but not published it: that
    complete-looking folder is never adopted, the dead run's lock is taken at once, and the re-run rebuilds
    every stage to the outputs of an undisturbed run."""
    root = tmp_path / "root"
    env = cli_env(prefect_homes[0], DDFLOW_FAULT_SLEEP="ingest:after:300")
    proc = start_cli(fault_config, root, env, tmp_path / "killed.log")
    half = wait_for(lambda: list(root.glob("ingest/.*.tmp-*/dataset.json")), proc, "ingest writing its output")
    kill_group(proc)
    owner = json.loads(next(root.glob("_locks/ingest/*.lock.owner")).read_text())
    assert owner["pid"] == proc.pid and not pid_alive(proc.pid)
    assert not list(root.glob("ingest/*/ref.json")), "an unpublished output looks finished"

    again = run_cli(fault_config, root, prefect_homes[0])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "waiting for the lock" not in again.stdout + again.stderr
    assert not half[0].exists() and temp_leftovers(root) == []
    assert not any(stage_flags(root).values())
    assert fingerprint(root) == fingerprint(subprocess_reference)


def _published_rounds(root: Path, index: int) -> list[Path]:
    return [p for p in root.glob("evaluate_round/*/ref.json")
            if json.loads((p.parent / "results.json").read_text())["index"] == index]


def test_sigkill_during_evaluation_resumes_at_the_next_round(fault_config: Path, prefect_homes: list[Path],
                                                             subprocess_reference: Path, tmp_path: Path) -> None:
    """Killed while evaluation round 1 of a set is being written (each round is its own task): the re-run shows
    every stage finished before the kill as Cached, reuses round 0 (its record is the killed run's),
    computes the other rounds, and ends with the outputs of an undisturbed run."""
    root = tmp_path / "root"
    env = cli_env(prefect_homes[0], DDFLOW_FAULT_SLEEP="evaluate_round:step1:300")
    proc = start_cli(fault_config, root, env, tmp_path / "killed.log")
    wait_for(lambda: _published_rounds(root, 0) and list(root.glob("evaluate_round/.*.tmp-*/results.json")), proc,
             "evaluation round 1 being written")
    time.sleep(0.2)
    kill_group(proc)
    round0 = _published_rounds(root, 0)[0]
    saved = round0.read_text()
    assert not _published_rounds(root, 1) and not list(root.glob("evaluate/*/ref.json"))
    finished = computed(root)
    assert len(finished) >= 5  # ingest, baseline rounds and aggregate, the evaluated set, its round 0

    again = run_cli(fault_config, root, prefect_homes[0])
    assert again.returncode == 0, again.stderr[-3000:]
    flags = stage_flags(root)
    assert flags["ingest"] and sum(flags.values()) == len(finished)
    assert {k: v for k, v in computed(root).items() if k in finished} == finished
    assert round0.read_text() == saved
    results = json.loads(next(root.glob("evaluate/*/results.json")).read_text())
    assert len(results["rounds"]) == 3
    assert temp_leftovers(root) == []
    assert fingerprint(root) == fingerprint(subprocess_reference)


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_lose_nothing(fault_config: Path, prefect_homes: list[Path],
                                                          subprocess_reference: Path, tmp_path: Path) -> None:
    """Three kill -9 at seeded random moments of the flow run, then a run to the end: no temporary folder is
    left, and the outputs are those of an undisturbed run."""
    root = tmp_path / "root"
    rng = random.Random(6)
    for i in range(3):
        log = tmp_path / f"killed-{i}.log"
        proc = start_cli(fault_config, root, cli_env(prefect_homes[0]), log)
        wait_for(lambda log=log: "Beginning flow run" in log.read_text(), proc, "the flow run starting")
        time.sleep(rng.uniform(0.5, 6.0))
        kill_group(proc)
    final = run_cli(fault_config, root, prefect_homes[0])
    assert final.returncode == 0, final.stderr[-3000:]
    assert temp_leftovers(root) == []
    assert fingerprint(root) == fingerprint(subprocess_reference)
