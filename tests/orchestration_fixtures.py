"""Shared fixtures and toy stages of the orchestration tests (a pytest plugin, loaded with
``pytest_plugins = ["orchestration_fixtures"]`` by the tests that need it; never autouse).

* ``PREFECT_HOME`` points at a temporary folder before prefect is imported, so tests never touch
  ``~/.prefect``; analytics are off and the ephemeral-server timeout is 300 s.
* ``prefect_harness``: one session-scoped ``prefect_test_harness`` (temporary SQLite API, ~12 s once).
* ``toy_env``: a counter folder (each toy stage execution appends a line to ``<stage>.count``) and the
  failure switch ``DDFLOW_TOY_FAIL=<stage>[,<stage>]``.
* ``prefect_server``: a real ``prefect server start`` on a free port (slow tests only).
* ``toy_flow``: three stages ``make -> double -> total`` over fsspec, so any store root works.

Test modules import helpers from here before pytest registers it as a plugin, hence PYTEST_DONT_REWRITE
(no assertions live here).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if "prefect" not in sys.modules:  # settings are read when prefect is imported
    _HOME = tempfile.mkdtemp(prefix="ddflow-prefect-home-")
    atexit.register(shutil.rmtree, _HOME, True)
    os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from prefect import flow  # noqa: E402

from ddcore.config import StageConfig, apply_overrides, load_yaml  # noqa: E402
from ddcore.data import storage as fsio  # noqa: E402
from flows.orchestration import PipelineRun, default_root  # noqa: E402
from flows.temp_server import free_port  # noqa: E402, F401 - re-exported to the tests
from tasks.runtime.refs import ArtifactRef  # noqa: E402
from tasks.runtime.stage import StageContext, make_stage_task  # noqa: E402
from tasks.runtime.store import ArtifactStore  # noqa: E402
from tasks.runtime.tracking import Tracker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
PREFECT = str(Path(sys.executable).parent / "prefect")
COUNTER_ENV = "DDFLOW_TOY_COUNTER_DIR"
FAIL_ENV = "DDFLOW_TOY_FAIL"
TOY_STAGES = ("make", "double", "total")


# -- toy stages ------------------------------------------------------------------------------
class ToyConfig(StageConfig):
    """Config of the toy stages: ``value`` feeds the numbers, ``sleep_s`` slows a stage down."""

    value: int = 1
    sleep_s: float = 0.0


def count_execution(stage: str) -> None:
    """Append one line to ``$DDFLOW_TOY_COUNTER_DIR/<stage>.count`` (when set)."""
    folder = os.environ.get(COUNTER_ENV)
    if folder:
        with open(Path(folder) / f"{stage}.count", "a") as f:
            f.write(f"{os.getpid()}\n")


def executions(folder: Path, stage: str) -> int:
    p = folder / f"{stage}.count"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _begin(stage: str, config: ToyConfig) -> None:
    count_execution(stage)
    if stage in os.environ.get(FAIL_ENV, "").split(","):
        raise RuntimeError(f"injected failure in {stage}")
    if config.sleep_s:
        time.sleep(config.sleep_s)


def _write_json(uri: str, obj: Any) -> None:
    fs, path = fsio.get_fs(uri)
    with fsio.open_write(fs, path) as f:
        f.write(json.dumps(obj).encode())


def _read_json(uri: str) -> Any:
    fs, path = fsio.get_fs(uri)
    return json.loads(fs.cat_file(path))


def make_numbers(inputs: dict[str, ArtifactRef], config: ToyConfig, out: str, ctx: StageContext) -> dict[str, Any]:
    """Stage 1: ``numbers.json`` = ``range(value)``."""
    _begin("make", config)
    _write_json(f"{out}/numbers.json", list(range(config.value)))
    ctx.log_metrics(0, {"n": config.value})
    return {"n": config.value}


def double_numbers(inputs: dict[str, ArtifactRef], config: ToyConfig, out: str, ctx: StageContext) -> dict[str, Any]:
    """Stage 2: every number times ``value``."""
    _begin("double", config)
    xs = _read_json(f"{inputs['numbers'].uri}/numbers.json")
    _write_json(f"{out}/numbers.json", [x * config.value for x in xs])
    for step, x in enumerate(xs):
        ctx.log_metrics(step, {"x": x})
    return {"n": len(xs), "device": ctx.device}


def total_numbers(inputs: dict[str, ArtifactRef], config: ToyConfig, out: str, ctx: StageContext) -> dict[str, Any]:
    """Stage 3: the sum."""
    _begin("total", config)
    total = sum(_read_json(f"{inputs['numbers'].uri}/numbers.json"))
    _write_json(f"{out}/total.json", {"total": total})
    return {"total": total}


MAKE = make_stage_task("make", make_numbers, "features", retries=0)
DOUBLE = make_stage_task("double", double_numbers, "features", retries=0)
TOTAL = make_stage_task("total", total_numbers, "report", retries=0)


@flow(name="toy-pipeline")
def toy_flow(root: str, value: int = 3, force: list[str] | None = None, tracking_uri: str | None = None,
             experiment: str = "toy") -> dict[str, Any]:
    """make(value) -> double(x2) -> total, against the store at ``root``."""
    store = ArtifactStore(root)
    tracker = Tracker(tracking_uri, experiment) if tracking_uri else Tracker.disabled()
    with PipelineRun(store, tracker=tracker, force=force or (), run_name="toy", stages=TOY_STAGES) as run:
        a = run.run(MAKE, ToyConfig(value=value), device="cpu")
        b = run.run(DOUBLE, ToyConfig(value=2), {"numbers": a}, device="cpu")
        run.run(TOTAL, ToyConfig(), {"numbers": b}, device="cpu")
    return {"outcomes": dict(run.outcomes), "refs": {k: v.model_dump() for k, v in run.refs.items()},
            "parent_run_id": tracker.parent_run_id}


class ToyPipelineConfig(StageConfig):
    """The YAML config of :func:`toy_config_flow`."""

    name: str = "toy"
    value: int = 3


@flow(name="toy-config-pipeline")
def toy_config_flow(config_path: str, overrides: list[str] | None = None, root: str | None = None,
                    force: list[str] | None = None) -> dict[str, Any]:
    """The toy pipeline behind ``distill_flow``'s signature (what deployments call), for serve/deploy tests."""
    cfg = ToyPipelineConfig.from_mapping(apply_overrides(load_yaml(config_path), overrides or []), where=config_path)
    return toy_flow.fn(root=default_root(root), value=cfg.value, force=force)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def toy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Counter folder for toy stage executions; no injected failure."""
    counters = tmp_path / "counters"
    counters.mkdir()
    monkeypatch.setenv(COUNTER_ENV, str(counters))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    return counters


def wait_http(url: str, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s")


def stop_process(proc: subprocess.Popen, *, timeout: float = 15) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", PYTHONPATH=f"{REPO / 'tests'}:{REPO}", **extra)
    return env


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1:<free port> with its own PREFECT_HOME; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    env = server_env(home, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=home)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc)
        yield url
    finally:
        flush_prefect_logs()
        stop_process(proc)
        log.close()


def flush_prefect_logs() -> None:
    """Send buffered Prefect logs now; after their server is gone, exit would wait ~60 s retrying them."""
    from prefect.logging.handlers import APILogHandler

    with contextlib.suppress(Exception):
        APILogHandler.flush()


def prefect_servers_of(root: Path) -> list[int]:
    """Pids of live `prefect server start` processes whose database lies under ``root``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if b"server" in cmd and b"start" in cmd and str(root).encode() in env:
            pids.append(int(proc.name))
    return pids


def api(url: str, path: str, body: dict | None = None) -> object:
    """GET (or, with ``body``, POST as JSON) ``url + path`` on a Prefect server and return the decoded JSON."""
    req = urllib.request.Request(f"{url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())
