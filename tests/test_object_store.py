"""An S3 object store as the shared artifact root, and a Ray worker node lost mid-distillation.

The store is a real S3-compatible server (``moto_server`` from the ``moto[server]`` package, started here
on 127.0.0.1); ddflow reaches it through fsspec/s3fs exactly as it reaches AWS S3 or MinIO (the endpoint
comes from ``AWS_ENDPOINT_URL``). The cluster is Ray's own multi-node simulation
(``ray.cluster_utils.Cluster``): a head node without CPUs (it schedules, like a production head) and two
one-CPU worker nodes with distinct custom resources, all on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import free_port, stop_process  # noqa: E402

DDFLOW = [sys.executable, "-m", "flows.cli"]
BUCKET = "ddflow-test"


@pytest.fixture
def s3_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``s3://ddflow-test/<test>`` on a moto S3 server of its own; the AWS_* variables point every process
    started from here (ddflow runs, Ray nodes) at it."""
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}") \
                        from None
                time.sleep(0.3)
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        s3().mkdir(BUCKET)
        yield f"s3://{BUCKET}/{tmp_path.name}"
    finally:
        stop_process(proc)
        log.close()


def s3():  # noqa: ANN201 - s3fs is an optional dependency
    """A fresh s3fs filesystem (no cached listings: what another node would see now)."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def write_config(path: Path, fmnist: Path, *, iterations: int = 8) -> Path:
    path.write_text(f"""
name: s3
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  dm: {{iterations: {iterations}, width: 8, batch_real: 8, checkpoint_every: 2, log_every: 1}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    return path


def run_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", PYTHONUNBUFFERED="1", **extra)
    return env


def summary(root: str) -> dict:
    return json.loads(s3().cat_file(f"{root.removeprefix('s3://')}/runs/s3/summary.json"))


def checkpoint_iteration(root: str) -> int | None:
    """The iteration of the distill stage's checkpoint in the store, if there is one."""
    import io

    import torch

    fs = s3()
    found = fs.glob(f"{root.removeprefix('s3://')}/_checkpoints/distill/*/loop.pt")
    if not found:
        return None
    try:
        return int(torch.load(io.BytesIO(fs.cat_file(found[0])), weights_only=True)["iteration"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return None  # replaced or removed between the listing and the read


def wait_for_checkpoint(root: str, iteration: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (checkpoint_iteration(root) or 0) < iteration:
        assert proc.poll() is None, "the run ended before its distillation checkpointed"
        assert time.monotonic() < deadline, f"no checkpoint at iteration {iteration} in {root}"
        time.sleep(0.3)


@pytest.mark.slow
def test_an_s3_root_holds_every_artifact_and_a_killed_distillation_resumes_from_it(
        s3_root: str, fake_fmnist: Path, tmp_path: Path) -> None:
    """With --root on S3: artifacts, stage locks, lineage and the distillation's mid-stage checkpoint all live
    in the bucket (nothing under a local folder); a run killed (SIGKILL) right after the checkpoint of
    iteration 4 is resumed by a fresh process (another machine would see the same bucket) at iteration 4, every
    finished stage is cached, the set equals the one of an uninterrupted run on a local root, and no checkpoint,
    lock or temporary object is left behind."""
    cfg = write_config(tmp_path / "c.yaml", fake_fmnist)
    home = tmp_path / "prefect"
    local = subprocess.run([*DDFLOW, "run", str(cfg), "--root", str(tmp_path / "local")], cwd=tmp_path,
                           env=run_env(home), capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    proc = subprocess.Popen([*DDFLOW, "run", str(cfg), "--root", s3_root], cwd=tmp_path,
                            env=run_env(home, DDFLOW_FAULT_SLEEP="distill:step5:120"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_checkpoint(s3_root, 4, proc)
        bucket = s3_root.removeprefix("s3://")
        assert s3().glob(f"{bucket}/_locks/distill/*.lock")  # the running stage's lock is a marker in the bucket
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert not list(tmp_path.glob("**/*.pt")) and not (tmp_path / "artifacts").exists()  # nothing local
    again = subprocess.run([*DDFLOW, "run", str(cfg), "--root", s3_root], cwd=tmp_path, env=run_env(home),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    stages = {s["name"]: s for s in summary(s3_root)["stages"]}
    assert stages["ingest"]["cached"] and not stages["distill/dm/ipc2"]["cached"]
    row = next(r for r in summary(s3_root)["results"] if r["method"] == "dm")
    assert row["artifact"].startswith(f"{s3_root}/distill/")
    ref = json.loads(s3().cat_file(f"{row['artifact'].removeprefix('s3://')}/ref.json"))
    assert ref["metrics"]["resumed_from"] == 4  # iterations 5..8 ran again, 1..4 came from the bucket
    digest = row["digest"]
    local_summary = json.loads((tmp_path / "local" / "runs" / "s3" / "summary.json").read_text())
    assert digest == {r["method"]: r["digest"] for r in local_summary["results"]}["dm"]
    lineage = subprocess.run([*DDFLOW, "lineage", digest[:12], "--root", s3_root, "--json"], cwd=tmp_path,
                             env=run_env(home), capture_output=True, text=True, timeout=120)
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    assert '"ingest"' in lineage.stdout and s3_root in lineage.stdout
    left = [p for p in s3().find(bucket) if "/_checkpoints/" in p or "/_locks/" in p or ".tmp-" in p]
    assert left == []


def stage_refs(root: str) -> dict[str, bytes]:
    """Every published ``ref.json`` in the store, by path, with its bytes."""
    fs = s3()
    return {p: fs.cat_file(p) for p in fs.glob(f"{root.removeprefix('s3://')}/*/*/ref.json")}


def node_running(cluster, pid: int):  # noqa: ANN001, ANN201 - ray.cluster_utils types
    """The worker node of ``cluster`` whose raylet is an ancestor of process ``pid``."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    raise AssertionError("the distillation is not running on a worker node")


@pytest.mark.slow
def test_losing_the_worker_node_mid_distillation_loses_no_stage(
        s3_root: str, fake_fmnist: Path, tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray cluster (a head without CPUs, two one-CPU worker nodes with distinct custom resources) runs the
    pipeline with the artifact root on S3. When the distillation has checkpointed iteration 4, the node running it
    is lost (its task process and the node's raylet SIGKILLed, the node removed): Ray re-runs the task on the
    other node, which takes over the dead holder's lock and resumes from the checkpoint in the bucket, so the run
    finishes; every stage finished before the loss keeps its published record byte for byte (0 stages lost),
    1 iteration (the 5th) is computed again, and a next run is all cached. (The nodes share this host, so the
    lock of the dead holder is taken over at once by its pid; across hosts its lease expires after
    ``stale_lock_s`` without heartbeats: tests/test_orchestration_concurrency.py.)"""
    from ray.cluster_utils import Cluster

    cfg = write_config(tmp_path / "c.yaml", fake_fmnist)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("DDFLOW_FAULT_SLEEP", "distill:step5:15")  # a window to lose the node in, every attempt
    store_mb = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "object_store_memory": store_mb, "include_dashboard": False})
    proc = None
    try:
        for name in ("node_a", "node_b"):
            cluster.add_node(num_cpus=1, object_store_memory=store_mb, resources={name: 1})
        cluster.wait_for_nodes()
        ray_args = ["--set", "runner.kind=ray", "--set", f"runner.address={cluster.address}",
                    "--set", "runner.num_cpus_per_task=1"]
        log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([*DDFLOW, "run", str(cfg), "--root", s3_root, *ray_args], cwd=tmp_path,
                                env=run_env(tmp_path / "prefect"), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        wait_for_checkpoint(s3_root, 4, proc)
        before = stage_refs(s3_root)
        marker = s3().glob(f"{s3_root.removeprefix('s3://')}/_locks/distill/*.lock")
        holder = json.loads(s3().cat_file(marker[0]))["pid"]
        lost = node_running(cluster, holder)
        survivor = next(n for n in cluster.worker_nodes if n is not lost)
        os.kill(holder, signal.SIGKILL)  # the machine is gone: its processes too, not only its raylet
        cluster.remove_node(lost, allow_graceful=False)
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-4000:]
        log.close()
        first = summary(s3_root)
        again = subprocess.run([*DDFLOW, "run", str(cfg), "--root", s3_root, *ray_args], cwd=tmp_path,
                               env=run_env(tmp_path / "prefect"), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        cluster.shutdown()
    assert before and all(stage_refs(s3_root).get(path) == data for path, data in before.items())  # 0 stages lost
    distill = next(s for s in first["stages"] if s["name"] == "distill/dm/ipc2")
    assert not distill["cached"] and distill["node"] == survivor.node_id != lost.node_id
    row = next(r for r in first["results"] if r["method"] == "dm")
    ref = json.loads(s3().cat_file(f"{row['artifact'].removeprefix('s3://')}/ref.json"))
    assert ref["metrics"]["resumed_from"] == 4  # iterations 1..4 from the bucket; the 5th, lost with the node, again
    assert all(s["cached"] for s in summary(s3_root)["stages"])


def test_listings_of_the_shared_root_are_never_cached(s3_root: str) -> None:
    """What another machine publishes is visible at once to a long-lived process (a Ray worker, ``ddflow
    serve``) that listed the same folder before: the store's filesystem keeps no listing cache for shared
    stores (s3fs caches listings by default)."""
    from tasks.runtime.store import ArtifactStore

    store = ArtifactStore(s3_root)
    store.fs.pipe_file(store._p("distill", "a" * 20, "ref.json"), b"{}")
    assert store.fs.ls(store._p("distill"), detail=False) == [store._p("distill", "a" * 20)]
    s3().pipe_file(store._p("distill", "b" * 20, "ref.json"), b"{}")  # another node publishes
    assert len(store.fs.ls(store._p("distill"), detail=False)) == 2
    assert store.fs.isdir(store._p("distill", "b" * 20))
