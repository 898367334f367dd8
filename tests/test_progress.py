"""Progress of long stages (tasks/runtime/progress.py): throttled log lines with ETA, Prefect progress
artifacts on the task run, and the CLI's terminal bars."""

from __future__ import annotations

import io
import logging

import pytest

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import REPO  # noqa: E402,F401 - sets PREFECT_HOME before prefect is imported

from tasks.runtime import progress as prog  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_text_has_counts_percent_metrics_and_eta() -> None:
    """The line names done/total with the unit and percent, the latest metrics, elapsed time and an ETA from
    the mean rate so far (none once finished)."""
    assert prog.progress_text(60, 150, "iterations", {"loss": 0.012345, "note": "x"}, 24.0) == \
        "60/150 iterations (40%), loss 0.01235, 24s elapsed, ETA 36s"
    assert "ETA" not in prog.progress_text(150, 150, "iterations", {}, 60.0)
    assert [prog.format_seconds(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


def test_log_lines_are_throttled_but_the_end_is_always_logged(caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With DDFLOW_PROGRESS_SECONDS=15, 100 updates one second apart give a line at 0, 15, ..., 90 s and the
    final one; every update reaches an installed display."""
    monkeypatch.setenv("DDFLOW_PROGRESS_SECONDS", "15")
    clock, seen = FakeClock(), []
    prog.set_display(lambda label, done, total, text: seen.append((label, done, total)))
    try:
        p = prog.StageProgress("distill dm ipc10", logging.getLogger("ddflow.test"), clock=clock)
        with caplog.at_level(logging.INFO, logger="ddflow.test"):
            for done in range(1, 101):
                clock.t = float(done - 1)
                p.update(done, 100, "iterations", loss=1.0 / done)
    finally:
        prog.set_display(None)
    lines = [r.getMessage() for r in caplog.records if r.name == "ddflow.test"]
    assert len(lines) == 8 and lines[0].startswith("distill dm ipc10: 1/100 iterations (1%)")
    assert lines[-1].startswith("distill dm ipc10: 100/100 iterations (100%)") and "ETA" in lines[1]
    assert len(seen) == 100 and seen[-1] == ("distill dm ipc10", 100, 100)


def test_progress_inside_a_prefect_task_creates_a_progress_artifact(prefect_harness: None) -> None:
    """Inside a Prefect task run, a stage's progress is also a Prefect progress artifact (the bar on the
    flow-run page), updated to 100 % at the end."""
    from prefect import flow, get_client, task
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    @task
    def work() -> None:
        p = prog.StageProgress("evaluate_round dm ipc10 round0", logging.getLogger("ddflow.test"))
        for done in range(1, 4):
            p.update(done, 3, "epochs", loss=0.5)

    @flow
    def wrapper() -> None:
        work()

    wrapper()

    async def read() -> list:
        async with get_client() as client:
            only = ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
            return await client.read_artifacts(artifact_filter=only)

    import asyncio

    found = [a for a in asyncio.run(read()) if a.description == "evaluate_round dm ipc10 round0"]
    assert len(found) == 1 and float(found[0].data) == 100.0


def test_terminal_bars_draw_and_uninstall() -> None:
    """`ddflow run`'s bars: a stage's updates draw a bar with its label while the block runs; afterwards no
    display is installed."""
    from rich.console import Console

    from flows.cli_progress import stage_bars

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with stage_bars(console, enabled=True):
        p = prog.StageProgress("train_vae", logging.getLogger("ddflow.test"))
        p.update(1, 4, "epochs", loss=0.3)
        assert prog._DISPLAY
    assert not prog._DISPLAY
    assert "train_vae" in out.getvalue()


def test_elapsed_and_eta_count_from_the_stage_start(caplog: pytest.LogCaptureFixture) -> None:
    """The first progress report of a stage that started a minute ago says about a minute elapsed (not 0 s),
    and the ETA of 1 of 2 epochs done is about another minute."""
    import time

    from tasks.runtime.stage import StageContext

    ctx = StageContext(stage="train_denoiser", key="k" * 20, checkpoint_dir="/nonexistent", device="cpu", seed=0,
                       _started=time.monotonic() - 60)
    with caplog.at_level("INFO"):
        ctx.progress(1, 2, "epochs", loss=0.5)
    (line,) = [r.getMessage() for r in caplog.records if "epochs" in r.getMessage()]
    assert "1/2 epochs (50%)" in line and ("1m00s elapsed" in line or "1m01s elapsed" in line), line
    assert "ETA 1m0" in line, line
