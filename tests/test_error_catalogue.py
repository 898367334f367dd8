"""docs/errors.md is the catalogue of user-facing errors: every row is triggered (tests/error_cases.py) and must
give a non-zero exit, exactly one ``error:`` line matching the documented pattern, and no traceback unless
``--debug``. A real ``ddflow run`` subprocess checks that Prefect's log of the failed flow shows no traceback."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures"]

from error_cases import CASES, run_config  # noqa: E402
from orchestration_fixtures import REPO  # noqa: E402 - sets PREFECT_HOME before prefect is imported
from typer.testing import CliRunner  # noqa: E402

from ddcore.errors import DDFlowError  # noqa: E402
from flows.cli import app  # noqa: E402

DOC = REPO / "docs" / "errors.md"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \| ([^|]+) \| (.+) \| `(.+)` \| ([^|]+) \|$")


@dataclass(frozen=True)
class Row:
    id: str
    category: str
    trigger: str
    message: str
    fix: str

    def pattern(self) -> re.Pattern[str]:
        """The message with each ``<...>`` placeholder standing for any text."""
        parts = re.split(r"<[^<>]+>", self.message)
        return re.compile(".+?".join(re.escape(p) for p in parts))


def catalogue() -> list[Row]:
    rows = [Row(*(g.strip() for g in m.groups())) for line in DOC.read_text().splitlines()
            if (m := ROW.match(line))]
    assert len(rows) == sum(line.startswith("| `") for line in DOC.read_text().splitlines())
    return rows


ROWS = catalogue()


def test_every_row_has_a_trigger_and_every_trigger_a_row() -> None:
    """The doc and the triggers list the same errors (no undocumented case, no untested row)."""
    assert [r.id for r in ROWS] == list(dict.fromkeys(r.id for r in ROWS))
    assert {r.id for r in ROWS} == set(CASES)
    assert {r.category.split()[0] for r in ROWS} >= {"config", "data", "artifacts", "weights", "runner", "tracking"}


def _errors(output: str) -> list[str]:
    return [line[len("error: "):] for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_catalogue_row(row: Row, fake_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    """The row's trigger gives exit code 2 and exactly one ``error:`` line matching the documented message,
    without a traceback; with ``--debug`` the exception itself surfaces (warning rows: exit 0 and exactly
    one matching warning)."""
    case = CASES[row.id](tmp_path, fake_fmnist)
    for name in ("DDFLOW_FAULT", "DDFLOW_FAULT_SLEEP", "MLFLOW_TRACKING_URI", "DDFLOW_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    if case.flow:
        request.getfixturevalue("prefect_harness")
        import tasks.runtime.tracking

        monkeypatch.setattr(tasks.runtime.tracking, "_WARNED", set())
    if case.prepare:
        case.prepare()
    if case.call is not None:
        with pytest.raises(DDFlowError) as exc:
            case.call()
        lines = [str(exc.value)]
        assert "\n" not in lines[0]
    else:
        assert case.args is not None
        runner = CliRunner()
        with caplog.at_level(logging.WARNING, logger="ddflow.tracking"):
            if case.context:
                with case.context():
                    result = runner.invoke(app, case.args)
            else:
                result = runner.invoke(app, case.args)
        assert "Traceback" not in result.output
        if case.warning:
            assert result.exit_code == 0, result.output[-2000:]
            lines = [r.getMessage() for r in caplog.records if r.name == "ddflow.tracking"]
        else:
            assert result.exit_code == 2, result.output[-2000:]
            lines = _errors(result.output)
            if not case.flow:
                debug = runner.invoke(app, ["--debug", *case.args]) if not case.context else None
                if debug is not None:
                    assert debug.exit_code != 0 and isinstance(debug.exception, DDFlowError)
                    assert _errors(debug.output) == []
    assert len(lines) == 1 and row.pattern().fullmatch(lines[0]), (lines, row.message)


def _subprocess_run(fmnist: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DDFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), DDFLOW_FAULT="ingest", HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               DO_NOT_TRACK="1")
    cfg = run_config(tmp_path, fmnist)
    return subprocess.run([sys.executable, "-m", "flows.cli", *extra, "run", cfg, "--root", str(tmp_path / "root")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_failed_flow_prints_no_traceback(fake_fmnist: Path, tmp_path: Path) -> None:
    """A stage failing under a real ``ddflow run`` (temporary Prefect server): exit 2, one ``error:`` line on
    stderr, and no traceback anywhere in the output (Prefect logs the failed flow run without one)."""
    done = _subprocess_run(fake_fmnist, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = _errors(done.stderr)
    assert next(r for r in ROWS if r.id == "stage-fault").pattern().fullmatch(line)
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
def test_failed_flow_with_debug_shows_the_traceback(fake_fmnist: Path, tmp_path: Path) -> None:
    """The same failure with ``--debug``: the traceback is shown and no one-line ``error:`` replaces it."""
    done = _subprocess_run(fake_fmnist, tmp_path, "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and _errors(done.stderr) == []
