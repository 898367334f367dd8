"""Deployments: prefect.yaml shape, the serve helper's checks, and (slow) real scheduled runs on a server."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import (  # noqa: E402
    PREFECT,
    PREFECT_YAML,
    REPO,
    api,
    server_env,
    stop_process,
    toy_config_flow,
)

from flows.cli import app  # noqa: E402
from flows.config import load_config  # noqa: E402
from flows.serve import ServeError, build_deployment, deployment_name  # noqa: E402

TOY_ENTRYPOINT = "tests/orchestration_fixtures.py:toy_config_flow"
DDFLOW = [sys.executable, "-m", "flows.cli"]


def distill_flow_params() -> list[str]:
    """Argument names of flows/distill.py:distill_flow, read without importing it."""
    tree = ast.parse((REPO / "flows" / "distill.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "distill_flow")
    return [a.arg for a in fn.args.args]


LOCAL_DEPLOYMENTS = ("imagenet1k-nightly", "demo-every-6h")  # pool ddflow-local; imagenet1k-ray: test_deployment_ray


def test_prefect_yaml_describes_the_two_schedules() -> None:
    """deployments/prefect.yaml: process pool ddflow-local, a nightly cron of imagenet1k on a thread runner and
    an interval run of the demo, both with exactly distill_flow's parameters and existing config files (plus
    the Ray cluster deployment, checked in tests/test_deployment_ray.py)."""
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {*LOCAL_DEPLOYMENTS, "imagenet1k-ray"}
    params = distill_flow_params()
    for d in (deps[name] for name in LOCAL_DEPLOYMENTS):
        assert d["work_pool"]["name"] == "ddflow-local"
        assert list(d["parameters"]) == params and (REPO / d["parameters"]["config_path"]).is_file()
    assert deps["demo-every-6h"]["entrypoint"] == "flows/distill.py:distill_flow"
    nightly = deps["imagenet1k-nightly"]
    assert nightly["parameters"]["config_path"] == "configs/imagenet1k.yaml"
    # imagenet1k.yaml names a Ray runner; the one-machine nightly opens the runner it names explicitly (threads,
    # one worker per GPU) through distill_on_runner instead of silently running on distill_flow's default pool
    assert nightly["entrypoint"] == "flows.distill:distill_on_runner"
    assert nightly["parameters"]["overrides"] == ["runner.kind=threads"]
    cfg = load_config(str(REPO / nightly["parameters"]["config_path"]), nightly["parameters"]["overrides"])
    assert cfg.runner.kind == "threads"
    assert deps["imagenet1k-nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deps["demo-every-6h"]["parameters"]["config_path"] == "configs/demo.yaml"
    assert deps["demo-every-6h"]["schedules"][0]["interval"] > 0
    assert "set_working_directory" in json.dumps(doc["pull"])


def test_build_deployment_checks_its_arguments(tmp_path: Path) -> None:
    """A deployment needs exactly one schedule and an existing config; it passes distill_flow's parameters."""
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("value: 2\n")
    with pytest.raises(ServeError, match="exactly one schedule"):
        build_deployment(cfg, flow=toy_config_flow)
    with pytest.raises(ServeError, match="exactly one schedule"):
        build_deployment(cfg, cron="0 3 * * *", interval=60, flow=toy_config_flow)
    with pytest.raises(ServeError, match="config file not found"):
        build_deployment(tmp_path / "nope.yaml", interval=60, flow=toy_config_flow)
    dep = build_deployment(cfg, cron="0 3 * * *", root="/r", force=["make"], flow=toy_config_flow)
    assert dep.name == deployment_name(cfg, cron="0 3 * * *", interval=None) == "toy-cron-0-3-x-x-x"
    assert dep.parameters == {"config_path": str(cfg), "overrides": [], "root": "/r", "force": ["make"]}
    assert dep.schedules[0].schedule.cron == "0 3 * * *"
    assert deployment_name(cfg, cron=None, interval=3600) == "toy-every-3600s"


def test_serve_without_server_is_one_error_line(tmp_path: Path) -> None:
    """`ddflow serve` refuses to start without a Prefect server (the temporary API never schedules)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg = tmp_path / "toy.yaml"
    cfg.write_text("value: 2\n")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        res = CliRunner().invoke(app, ["serve", str(cfg), "--interval", "60", "--entrypoint", TOY_ENTRYPOINT])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "prefect server start" in res.output and "PREFECT_API_URL" in res.output


# -- against a real server (slow) ------------------------------------------------------------
def wait_for_completed_run(url: str, flow_name: str, deployment: str, *, timeout: float) -> dict:
    """Poll the API (bounded) until a run of ``flow_name/deployment`` is COMPLETED; fail on FAILED/CRASHED."""
    deadline = time.monotonic() + timeout
    dep_id = None
    while time.monotonic() < deadline:
        try:
            dep_id = dep_id or api(url, f"/deployments/name/{flow_name}/{deployment}")["id"]  # type: ignore[index]
            final = {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}
            runs = api(url, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep_id]}},
                                                  "flow_runs": {"state": final}, "limit": 20})
        except OSError:
            runs = []
        for run in runs:  # type: ignore[union-attr]
            state = run["state"]["type"] if run.get("state") else None
            assert state not in ("FAILED", "CRASHED"), run["state"]
            if state == "COMPLETED":
                return run
        time.sleep(1)
    raise TimeoutError(f"no completed run of {flow_name}/{deployment} within {timeout:g}s")


@pytest.mark.slow
def test_served_interval_schedule_runs(tmp_path: Path, prefect_server: str) -> None:
    """`ddflow serve CONFIG --interval 5` registers a deployment on a real server and a scheduled run of it
    completes (artifacts appear in the store); stopping the serving process leaves no process behind."""
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("value: 2\n")
    env = server_env(tmp_path / "client-home", PREFECT_API_URL=prefect_server)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*DDFLOW, "serve", str(cfg), "--interval", "5", "--name", "toy-serve", "--entrypoint",
                             TOY_ENTRYPOINT, "--root", str(tmp_path / "root")], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = wait_for_completed_run(prefect_server, "toy-config-pipeline", "toy-serve", timeout=180)
        assert run["parameters"]["config_path"] == str(cfg)
        assert list((tmp_path / "root" / "total").glob("*/ref.json"))
    except BaseException:
        log.flush()
        print((tmp_path / "serve.log").read_text()[-4000:])
        raise
    finally:
        stop_process(proc)
        log.close()
    assert proc.poll() is not None


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_worker_runs_it(tmp_path: Path, prefect_server: str) -> None:
    """deployments/prefect.yaml (with the toy flow as entrypoint) deploys both schedules to a process pool,
    and `prefect worker start --run-once` executes a triggered run to completion."""
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    doc["deployments"] = [d for d in doc["deployments"] if d["name"] in LOCAL_DEPLOYMENTS]
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("value: 2\n")
    for d in doc["deployments"]:
        d["entrypoint"] = TOY_ENTRYPOINT
        d["parameters"].update(config_path=str(cfg), root=str(tmp_path / "root"))
    project = tmp_path / "prefect.yaml"
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = server_env(tmp_path / "client-home", PREFECT_API_URL=prefect_server, DDFLOW_REPO=str(REPO))

    def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
        return res

    prefect("work-pool", "create", "ddflow-local", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(project))
    nightly = api(prefect_server, "/deployments/name/toy-config-pipeline/imagenet1k-nightly")
    demo = api(prefect_server, "/deployments/name/toy-config-pipeline/demo-every-6h")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"  # type: ignore[index]
    assert demo["schedules"][0]["schedule"]["interval"] == 21600  # type: ignore[index]
    assert demo["work_pool_name"] == "ddflow-local"  # type: ignore[index]
    prefect("deployment", "run", "toy-config-pipeline/demo-every-6h")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "ddflow-local", "--run-once"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = worker.communicate(timeout=180)
        wait_for_completed_run(prefect_server, "toy-config-pipeline", "demo-every-6h", timeout=30)
    except BaseException:
        stop_process(worker)
        raise
    assert list((tmp_path / "root" / "total").glob("*/ref.json")), out[-3000:]
    shutil.rmtree(tmp_path / "root", ignore_errors=True)
