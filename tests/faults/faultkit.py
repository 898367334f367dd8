"""Shared pieces of the fault-injection suite (a pytest plugin: ``pytest_plugins = ["faultkit"]``).

* a small Fashion-MNIST-format folder shared by the whole session (stage keys include its path, so every
  run of the suite's config has the same keys and can be compared output by output);
* the pipeline config used by the fault tests (ingest, baseline rounds + aggregate, distill random/dm,
  evaluation rounds + aggregate x2, report; MLflow off unless asked for);
* helpers to run ``ddflow`` in a subprocess (its own process group, so ``kill -9`` takes the temporary
  Prefect server with it) or in-process through typer's ``CliRunner``;
* :func:`fingerprint`: what must not change when a run is disturbed: the sha256 of every dataset,
  synthetic-set and feature output by stage key, and the evaluation/summary results with wall-clock
  times and root paths removed;
* :func:`temp_leftovers`: temporary stage folders left under a root.

Test modules import helpers from here before pytest registers it as a plugin, hence PYTEST_DONT_REWRITE
(fixtures here report failures with ``pytest.fail``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_fake_fmnist

from tasks.runtime.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
DDFLOW = [sys.executable, "-m", "flows.cli"]
RUN_NAME = "faults"
OUTPUT_PATH = re.compile(r".*/([A-Za-z0-9][A-Za-z0-9_.-]*/[0-9a-f]{20})/?")
TIMING_KEYS = frozenset({"seconds", "duration_s", "started_at", "finished_at"})
CLEAN_ENV = ("PREFECT_API_URL", "DDFLOW_FAULT", "DDFLOW_FAULT_SLEEP", "MLFLOW_TRACKING_URI", "DDFLOW_DEBUG",
             "DDFLOW_ROOT")


def pipeline_yaml(data: Path, *, num_eval: int = 3, tracking: bool = False, extra: str = "") -> str:
    """The fault suite's pipeline config over ``data`` (a Fashion-MNIST-format folder)."""
    return f"""
name: {RUN_NAME}
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {data}}}, shard_size: 50}}
methods:
  random: {{width: 8}}
  dm: {{iterations: 4, width: 8, batch_real: 8, checkpoint_every: 1, log_every: 1}}
evaluation: {{epochs: 1, width: 8, num_eval: {num_eval}}}
tracking: {{enabled: {str(tracking).lower()}}}
{extra}"""


def write_config(path: Path, data: Path, **kwargs: Any) -> Path:
    path.write_text(pipeline_yaml(data, **kwargs))
    return path


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST-format IDX folder, 12 train / 4 test images per class, shared by the session."""
    return write_fake_fmnist(tmp_path_factory.mktemp("fault-fmnist"))


@pytest.fixture(scope="session")
def fault_config(fault_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's config file (3 evaluation rounds per set, tracking off)."""
    return write_config(tmp_path_factory.mktemp("fault-config") / "faults.yaml", fault_data)


@pytest.fixture(scope="session")
def prefect_homes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two PREFECT_HOME folders: runs in sequence share the first; a concurrent second run uses the other
    (two temporary Prefect servers must not share one SQLite database)."""
    return [tmp_path_factory.mktemp("prefect-home-a"), tmp_path_factory.mktemp("prefect-home-b")]


@pytest.fixture(scope="session")
def subprocess_reference(fault_config: Path, prefect_homes: list[Path],
                         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of one undisturbed ``ddflow run`` subprocess of the suite's config (compared like with like)."""
    root = tmp_path_factory.mktemp("fault-reference") / "root"
    done = run_cli(fault_config, root, prefect_homes[0])
    if done.returncode != 0:
        pytest.fail(f"reference run failed: {done.stderr[-3000:]}")
    return root


@pytest.fixture(scope="session")
def inprocess_reference(prefect_harness: None, fault_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of one undisturbed in-process ``ddflow run`` (needs the ``orchestration_fixtures`` plugin)."""
    root = tmp_path_factory.mktemp("fault-inprocess-reference") / "root"
    done = invoke("run", str(fault_config), "--root", str(root))
    if done.exit_code != 0:
        pytest.fail(f"reference run failed: {done.output[-3000:]}")
    return root


# -- running ddflow ---------------------------------------------------------------------------
def invoke(*args: str) -> Any:
    """``ddflow ARGS`` in this process (typer's CliRunner); returns the click ``Result``."""
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def cli_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               DO_NOT_TRACK="1", **extra)
    return env


def run_cli(cfg: Path, root: Path, prefect_home: Path, *extra: str, timeout: float = 400,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``ddflow run CFG --root ROOT`` in a subprocess, to completion."""
    return subprocess.run([*DDFLOW, "run", str(cfg), "--root", str(root), *extra], cwd=REPO,
                          env=env or cli_env(prefect_home), capture_output=True, text=True, timeout=timeout)


def start_cli(cfg: Path, root: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ddflow run`` in the background, in its own process group, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([*DDFLOW, "run", str(cfg), "--root", str(root)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """``kill -9`` the process group of ``proc`` (the CLI and its temporary Prefect server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(found: Callable[[], Any], proc: subprocess.Popen, what: str, timeout: float = 240) -> Any:
    """Poll until ``found()`` is truthy; fail (after killing ``proc``) when it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    kill_group(proc)
    pytest.fail(f"{what} did not happen (exit code {proc.returncode})")


# -- what must survive a fault ----------------------------------------------------------------
def normalise(obj: Any) -> Any:
    """``obj`` without wall-clock fields, and stage output paths cut to ``<stage>/<key>`` (roots differ)."""
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    if isinstance(obj, str) and (m := OUTPUT_PATH.fullmatch(obj)):
        return m.group(1)
    return obj


def summary(root: Path) -> dict[str, Any]:
    return json.loads((root / "runs" / RUN_NAME / "summary.json").read_text())


def fingerprint(root: Path) -> dict[str, Any]:
    """Content of every finished output under ``root`` that a fault must not change.

    Dataset, synthetic-set and feature outputs: their sha256 by ``<stage>/<key>``. Evaluations: their
    ``results.json`` without times and paths (their folder digest includes wall-clock seconds, so the
    report's key legitimately differs between runs; the summary's results stand for the report).
    """
    out: dict[str, Any] = {}
    for rec in ArtifactStore(root).records():
        ref = rec.ref
        if ref.kind == "eval":
            out[f"{ref.stage}/{ref.key}"] = normalise(json.loads((Path(ref.uri) / "results.json").read_text()))
        elif ref.kind != "report":
            out[f"{ref.stage}/{ref.key}"] = ref.sha256
    out["summary.results"] = normalise(summary(root)["results"])
    return out


def temp_leftovers(root: Path) -> list[Path]:
    """Temporary stage folders (``<root>/<stage>/.<key>.tmp-*``) still present."""
    return sorted(p for p in root.glob("*/.*") if ".tmp-" in p.name)


def computed(root: Path) -> dict[str, str]:
    """``{"<stage>/<key>": started_at}`` of every finished output (changes iff the output was recomputed)."""
    return {f"{r.ref.stage}/{r.ref.key}": r.started_at for r in ArtifactStore(root).records()}


def stage_flags(root: Path) -> dict[str, bool]:
    """``{stage label: cached?}`` from the last run's summary."""
    return {s["name"]: s["cached"] for s in summary(root)["stages"]}
