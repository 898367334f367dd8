"""``kill -TERM`` (what a scheduler, a Prefect worker's cancel or a pre-empted node sends) of a ``ddflow run``
whose distillation would run for hours: the run ends within seconds, the stage keeps its checkpoint and
publishes nothing, and the next run resumes from that checkpoint (``tasks/runtime/stop.py``)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faultkit import cli_env, start_cli, wait_for, write_config

from ddcore.checkpoint import load_state

pytest_plugins = ["faultkit"]

LONG = "dm: {iterations: 1000000, width: 8, batch_real: 8, checkpoint_every: 5, log_every: 1}"


def stop_and_wait(proc: subprocess.Popen, log: Path) -> str:
    """SIGTERM to ``ddflow run`` only (not its group: the temporary Prefect server follows its parent), then
    its output once it has exited (two minutes at most, where the stage alone would run for hours)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"ddflow run was still running 120 s after SIGTERM:\n{log.read_text()[-3000:]}")
    return log.read_text()


@pytest.mark.slow
def test_sigterm_stops_a_long_distillation_and_the_next_run_resumes(fault_data: Path, tmp_path: Path,
                                                                     prefect_homes: list[Path]) -> None:
    """SIGTERM mid-distillation ends the run (non-zero exit) with the stage stopped at its next progress
    report, its checkpoint kept and no distill output or lock left; a second run of the same config resumes
    from that checkpoint (``resumed from`` a positive iteration) and is stopped the same way."""
    cfg = write_config(tmp_path / "c.yaml", fault_data, num_eval=1)
    cfg.write_text(re.sub(r"dm: \{[^}]*\}", LONG, cfg.read_text()))
    root, env = tmp_path / "root", cli_env(prefect_homes[0])
    checkpoints = root / "_checkpoints" / "distill"
    first = start_cli(cfg, root, env, tmp_path / "first.log")
    wait_for(lambda: list(checkpoints.glob("*/loop.pt")), first, timeout=300, what="a distillation checkpoint")
    out = stop_and_wait(first, tmp_path / "first.log")
    assert first.returncode != 0
    assert "stage 'distill' stopped: the run received TerminationSignal" in out and "checkpoint is kept" in out
    (ckpt,) = checkpoints.glob("*/loop.pt")
    stopped_at = int(load_state(ckpt)["iteration"])
    assert stopped_at >= 5 and not (root / "distill" / ckpt.parent.name).exists()  # DM published nothing
    assert not [p for p in (root / "_locks").rglob("*.owner")]  # the lock was released

    second = start_cli(cfg, root, env, tmp_path / "second.log")
    deadline = time.monotonic() + 300
    while f"resumed_from {stopped_at}" not in (tmp_path / "second.log").read_text():
        assert second.poll() is None and time.monotonic() < deadline, (tmp_path / "second.log").read_text()[-3000:]
        time.sleep(0.5)
    out = stop_and_wait(second, tmp_path / "second.log")
    assert second.returncode != 0 and "stage 'distill' stopped" in out
