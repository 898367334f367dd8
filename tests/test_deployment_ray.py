"""The Ray cluster deployment (deployments/prefect.yaml ``imagenet1k-ray`` -> flows.distill:distill_on_runner):
its shape, the one-line refusal of an unreachable Ray head, and (slow) the operator's whole sequence of
deployments/README.md on a two-node Ray cluster made with ``ray start`` on this machine: server, pool, worker,
deploy, run, watch."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import PREFECT, PREFECT_YAML, REPO, api, free_port, server_env, stop_process  # noqa: E402

from flows.runners import RunnerConfig, RunnerError, check_ray_reachable, ray_endpoint, runner_session  # noqa: E402

DEPLOYMENT = "imagenet1k-ray"
FLOW_NAME = "ddflow-distill-on-runner"
RAY = str(Path(sys.executable).parent / "ray")
MARKER = "DDFLOW_TEST_RAY_DEPLOYMENT"  # in the env of every process this file starts, for the clean-up scan


def ray_deployment() -> dict:
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    return next(d for d in doc["deployments"] if d["name"] == DEPLOYMENT)


def test_ray_deployment_matches_its_flow() -> None:
    """The Ray deployment names, by module path, an existing flow whose parameters are exactly the deployment's,
    an existing config, overrides that make a valid Ray runner config (kind ray, address auto, spread), its own
    pool ddflow-ray, and a nightly schedule that starts paused (deploying never starts cluster runs by itself)."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    import flows.distill
    from flows.config import load_config

    dep = ray_deployment()
    fl = load_flow_from_entrypoint(dep["entrypoint"], use_placeholder_flow=False)
    assert isinstance(fl, Flow) and fl.name == FLOW_NAME
    assert fl is flows.distill.distill_on_runner  # a module path: Ray workers can import what the flow pickles
    assert list(dep["parameters"]) == list(inspect.signature(fl.fn).parameters)
    params = dep["parameters"]
    assert (REPO / params["config_path"]).is_file()
    cfg = load_config(str(REPO / params["config_path"]), params["overrides"])
    assert (cfg.runner.kind, cfg.runner.address, cfg.runner.spread) == ("ray", "auto", True)
    assert dep["work_pool"]["name"] == "ddflow-ray" and dep["concurrency_limit"] == 1
    assert [s["active"] for s in dep["schedules"]] == [False]


def test_an_unreachable_ray_head_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray head nobody answers at (runner.address, or RAY_ADDRESS behind 'auto') is refused within seconds
    in one line naming the address and the fix, by runner_session too (ray.init itself would retry for
    minutes); a malformed address is refused as such."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()  # nothing listens there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RunnerError, match=rf"no Ray cluster answers at 127\.0\.0\.1:{port} \(runner\.address=") as e:
        check_ray_reachable(f"127.0.0.1:{port}")
    assert "ray start --head" in str(e.value) and "\n" not in str(e.value)
    assert ray_endpoint("ray://10.0.0.1:10001") == ("10.0.0.1", 10001) and ray_endpoint("auto") is None
    with pytest.raises(RunnerError, match="is not host:port"):
        ray_endpoint("head-node")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    t0 = time.monotonic()
    with temporary_settings({PREFECT_API_URL: api_url}), \
            pytest.raises(RunnerError, match=rf"RAY_ADDRESS=127\.0\.0\.1:{port}") as e, \
            runner_session(RunnerConfig(kind="ray", address="auto")):
        pass
    assert time.monotonic() - t0 < 30 and "\n" not in str(e.value)
    import ray

    assert not ray.is_initialized()


# -- the operator's sequence on a two-node cluster (slow) --------------------------------------------
def marked_pids(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``MARKER=marker`` (this test's processes only)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
    return pids


def wait_port(port: int, proc: subprocess.Popen, *, timeout: float) -> None:
    """Wait (bounded) until 127.0.0.1:``port`` accepts connections; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"port {port} did not open within {timeout:g}s")


@contextlib.contextmanager
def two_node_cluster(env: dict[str, str], folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head (1 CPU, resource ``head_node``) and a worker node (1 CPU, ``worker_node``) started with
    ``ray start --block`` under their own temp dirs; yields the head address and {role: node id}. On exit only
    these processes are stopped (their process groups, then anything left carrying the marker): never
    ``ray stop``, which would stop every Ray cluster on the machine."""
    port = free_port()
    common = ["--num-cpus", "1", "--object-store-memory", str(80 * 1024 * 1024), "--disable-usage-stats", "--block"]
    head_cmd = [RAY, "start", "--head", "--port", str(port), "--resources", '{"head_node": 1}', "--temp-dir",
                str(folder / "h"), "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()), *common]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(head_cmd, env=env, stdout=open(folder / "head.log", "wb"),  # noqa: SIM115
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_port(port, procs[0], timeout=90)
        address = f"127.0.0.1:{port}"
        node_cmd = [RAY, "start", "--address", address, "--resources", '{"worker_node": 1}', "--temp-dir",
                    str(folder / "w"), *common]
        procs.append(subprocess.Popen(node_cmd, env=env, stdout=open(folder / "node.log", "wb"),  # noqa: SIM115
                                      stderr=subprocess.STDOUT, start_new_session=True))
        probe = ("import json, sys, time, ray\n"
                 "ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)\n"
                 "deadline = time.monotonic() + 90\n"
                 "while time.monotonic() < deadline:\n"
                 "    nodes = [n for n in ray.nodes() if n['Alive']]\n"
                 "    if len(nodes) == 2: break\n"
                 "    time.sleep(0.5)\n"
                 "print(json.dumps({r: n['NodeID'] for n in nodes for r in ('head_node', 'worker_node')"
                 " if r in n['Resources']}))\n")
        out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True,
                             timeout=150)
        assert out.returncode == 0, out.stderr[-3000:]
        roles = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(roles) == {"head_node", "worker_node"}, (roles, (folder / "node.log").read_text()[-2000:])
        yield address, roles
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=10)
        for pid in marked_pids(env[MARKER]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_runs_the_ray_deployment_on_both_nodes(fake_fmnist: Path, tmp_path: Path,
                                                        prefect_server: str) -> None:
    """The README's sequence end to end: a two-node Ray cluster (``ray start``, 1 CPU and a distinct custom
    resource per node), a real Prefect server, pool ddflow-ray, ``prefect deploy --name imagenet1k-ray`` from
    deployments/prefect.yaml, a triggered run with a tiny config, and ``prefect worker start`` whose flow run
    reaches the cluster through RAY_ADDRESS only. The run completes; its log names the 2-node cluster and warns
    about the local root; the stages submitted as Ray tasks (class groups, rounds) ran on both nodes and only on
    them (summary timeline and ref.json records agree); the merged distilled set has 2 images per class."""
    from ddcore.data.synthetic_io import load_synthetic
    from tasks.runtime.refs import read_record_at

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
name: ray-deployment
ipcs: [2]
class_groups: 2
data: {{source: {{kind: fashion_mnist, root: {fake_fmnist}}}, shard_size: 50}}
methods:
  dm: {{iterations: 3, width: 8, batch_real: 8, checkpoint_every: 0}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
runner: {{num_cpus_per_task: 1}}
""")
    root = tmp_path / "root"
    folder = Path(tempfile.mkdtemp(prefix="ddr-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    ray_env = {**base, MARKER: str(folder), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    worker_out = ""
    try:
        with two_node_cluster(ray_env, folder) as (address, roles):
            env = server_env(tmp_path / "client-home", PREFECT_API_URL=prefect_server, DDFLOW_REPO=str(REPO),
                             RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", **{MARKER: str(folder)})

            def prefect(*args: str, timeout: float = 180) -> str:
                res = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                                     timeout=timeout)
                assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
                return res.stdout

            prefect("work-pool", "create", "ddflow-ray", "--type", "process", "--overwrite")
            prefect("--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--name", DEPLOYMENT)
            dep = api(prefect_server, f"/deployments/name/{FLOW_NAME}/{DEPLOYMENT}")
            assert dep["work_pool_name"] == "ddflow-ray"  # type: ignore[index]
            assert [s["active"] for s in dep["schedules"]] == [False]  # type: ignore[index]
            started = prefect("deployment", "run", f"{FLOW_NAME}/{DEPLOYMENT}", "--param", f"config_path={cfg}",
                              "--param", f"root={root}")
            run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)  # type: ignore[union-attr]
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "ddflow-ray", "--run-once"], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
            try:
                worker_out, _ = worker.communicate(timeout=480)
            finally:
                stop_process(worker)
            run = api(prefect_server, f"/flow_runs/{run_id}")
            logs = api(prefect_server, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    except BaseException:
        print(worker_out[-6000:])
        for name in ("head.log", "node.log"):
            with contextlib.suppress(OSError):
                print(name, (folder / name).read_text()[-2000:])
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    assert run["state"]["type"] == "COMPLETED", (run["state"], worker_out[-4000:])  # type: ignore[index]
    assert run["parameters"]["overrides"] == ray_deployment()["parameters"]["overrides"]  # type: ignore[index]
    messages = {entry["message"]: entry["level"] for entry in logs}  # type: ignore[union-attr]
    cluster = f"Ray cluster: 2 node(s), 2 CPU, 0 GPU, resources head_node=1, worker_node=1; artifact root: {root}"
    assert cluster in messages, list(messages)[-20:]
    assert [level for m, level in messages.items() if "is a local path: every Ray node must mount it" in m] == [30]
    summary = json.loads((root / "runs" / "ray-deployment" / "summary.json").read_text())
    # ingest and report run in the flow-run process (a Ray driver on the head); every other stage is a Ray task
    submitted = {s["name"]: s["node"] for s in summary["stages"] if s["name"] not in ("ingest", "report")}
    assert {"distill/dm/ipc2/classes0-4", "distill/dm/ipc2/classes5-9", "baseline/ipc2/round1"} <= set(submitted)
    assert set(submitted.values()) == set(roles.values())  # the tasks used both nodes (and only them)
    recorded = {rec.node for p in root.glob("*/*/ref.json") if (rec := read_record_at(str(p.parent)))}
    assert recorded == set(roles.values())  # each output's ref.json names a node of this cluster
    dm = next(r["artifact"] for r in summary["results"] if r["method"] == "dm")
    synthetic = load_synthetic(dm)  # the merged set of the two class groups: 2 images per class
    assert sorted(synthetic.labels.tolist()) == sorted(list(range(10)) * 2)
