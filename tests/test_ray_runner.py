"""Task runners: thread defaults and device assignment; Ray with a real Prefect server and its GPU check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import DOUBLE, MAKE, REPO, ToyConfig, executions, toy_flow  # noqa: E402
from prefect import flow  # noqa: E402

from flows.orchestration import PipelineRun  # noqa: E402
from flows.runners import (  # noqa: E402
    RunnerConfig,
    RunnerError,
    assign_devices,
    build_task_runner,
    check_ray_resources,
    require_api_url,
    runner_session,
    stage_options,
)
from tasks.runtime.store import ArtifactStore  # noqa: E402


@flow(name="toy-ray")
def toy_ray_flow(root: str, runner: dict) -> dict:
    """Two independent 'make' stages in parallel, then 'double' on the first (submitted with Ray options)."""
    cfg = RunnerConfig(**runner)
    store = ArtifactStore(root)
    with PipelineRun(store) as run:
        with stage_options(cfg, gpu=False):
            a = run.submit(MAKE, ToyConfig(value=3, sleep_s=0.5), device="cpu")
            b = run.submit(MAKE, ToyConfig(value=4, sleep_s=0.5), device="cpu")
        with stage_options(cfg):
            c = run.submit(DOUBLE, ToyConfig(value=2), {"numbers": a}, device="cpu")
        refs = [run.result(f) for f in (a, b, c)]
    return {"outcomes": dict(run.outcomes), "keys": [r.key for r in refs], "pid": os.getpid()}


def test_assign_devices_round_robin() -> None:
    """Devices are dealt round robin over the GPUs; without any every task gets 'cpu'."""
    assert assign_devices(5, devices=["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert assign_devices(3, devices=[]) == ["cpu"] * 3
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert assign_devices(1) == [expected]


def test_runner_config_and_thread_runner() -> None:
    """The runner config is typed (unknown keys and negative GPUs refused); 'threads' builds Prefect's pool."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from ddcore.errors import ConfigError

    runner = build_task_runner(RunnerConfig(max_workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3
    with pytest.raises(ConfigError, match="unknown key 'gpus'"):
        RunnerConfig.from_mapping({"kind": "ray", "gpus": 1}, where="runner")
    with pytest.raises(ConfigError, match="num_gpus_per_task"):
        RunnerConfig.from_mapping({"num_gpus_per_task": -1}, where="runner")


def test_thread_session_sets_gpu_tag_limit(prefect_harness: None, tmp_path: Path, toy_env: Path) -> None:
    """A threads session with gpu_concurrency creates (or updates) the Prefect tag limit 'gpu' and runs flows
    on Prefect's thread pool."""
    from prefect.client.orchestration import get_client

    for limit in (2, 1):
        with runner_session(RunnerConfig(max_workers=2, gpu_concurrency=limit)) as task_runner:
            result = toy_flow.with_options(task_runner=task_runner)(root=str(tmp_path), value=2)
    assert result["outcomes"] == {"make": "cached", "double": "cached", "total": "cached"}
    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 1


def test_ray_needs_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kind 'ray' without PREFECT_API_URL is refused with one line telling how to start a server; Ray checks
    before Ray is up are refused too."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(RunnerError, match="prefect server start") as err:
        require_api_url(RunnerConfig(kind="ray"))
    assert "\n" not in str(err.value)
    with pytest.raises(RunnerError, match="not initialised"):
        check_ray_resources(1)


def test_ray_runner_with_real_server(tmp_path: Path, toy_env: Path, prefect_server: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy flow runs on a local Ray cluster (2 CPUs) through RayTaskRunner against a real Prefect server:
    tasks execute in Ray workers, a second run is all Cached, and asking for a GPU on this GPU-less cluster
    is refused with one clear error instead of hanging."""
    import ray
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{REPO}")  # Ray workers import the toy stages
    cfg = RunnerConfig(kind="ray", num_cpus=2, object_store_memory_mb=128)
    with temporary_settings({PREFECT_API_URL: prefect_server}), runner_session(cfg) as task_runner:
        assert ray.is_initialized() and check_ray_resources(0, 1)["CPU"] == 2
        ray_flow = toy_ray_flow.with_options(task_runner=task_runner)
        first = ray_flow(root=str(tmp_path), runner=cfg.model_dump())
        assert first["outcomes"] == {"make": "completed", "double": "completed"}
        pids = set((toy_env / "make.count").read_text().split())
        assert len(pids) >= 1 and str(first["pid"]) not in pids  # executed in Ray worker processes
        second = ray_flow(root=str(tmp_path), runner=cfg.model_dump())
        assert second["outcomes"] == {"make": "cached", "double": "cached"} and second["keys"] == first["keys"]
        assert executions(toy_env, "make") == 2 and executions(toy_env, "double") == 1
        gpu_cfg = cfg.model_copy(update={"num_gpus_per_task": 1.0})
        with pytest.raises(RunnerError, match=r"0 GPU\(s\) but each GPU stage asks for num_gpus=1") as err, \
                runner_session(gpu_cfg):
            pass
        assert "\n" not in str(err.value)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_tasks_spread_over_a_two_node_ray_cluster(tmp_path: Path, toy_env: Path, prefect_server: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real two-node Ray cluster (``ray.cluster_utils.Cluster``: a head and a worker node, 1 CPU each, both
    on this machine), two independent stages asking for one CPU each run at once, one per node, and each
    ``ref.json`` records the Ray node that ran it (issue 16 item 1: the per-task node record)."""
    import ray
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from ray.cluster_utils import Cluster

    from tasks.runtime.refs import read_record_at

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{REPO}")
    node_args = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "resources": {"head_node": 1}})
    try:
        cluster.add_node(**{k: v for k, v in node_args.items() if k != "include_dashboard"},
                         resources={"worker_node": 1})
        cluster.wait_for_nodes()
        cfg = RunnerConfig(kind="ray", address=cluster.address, num_cpus_per_task=1.0)
        with temporary_settings({PREFECT_API_URL: prefect_server}), runner_session(cfg) as task_runner:
            nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            assert len(nodes) == 2 and check_ray_resources(0, 1)["CPU"] == 2
            out = toy_ray_flow.with_options(task_runner=task_runner)(root=str(tmp_path), runner=cfg.model_dump())
        assert out["outcomes"] == {"make": "completed", "double": "completed"}
        store = ArtifactStore(str(tmp_path))
        ran_on = [read_record_at(store.location("make", key)).node for key in out["keys"][:2]]
        assert set(ran_on) == nodes  # the two concurrent one-CPU stages took one node each
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_a_pipeline_fans_out_over_two_ray_nodes_and_merges_the_single_node_set(
        fake_fmnist: Path, tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline on a two-node Ray cluster (1 CPU and a distinct custom resource per node, tasks of 1 CPU,
    ``runner.spread``): DM's two class-group tasks run one on each node (the head and the worker, told apart by
    their custom resources), the evaluation and baseline rounds use both nodes, and the merged set equals the set
    of the same config run as one task in one process (issue 16 item 1)."""
    import ray
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from ray.cluster_utils import Cluster

    from ddcore.data.synthetic_io import load_synthetic
    from flows.distill import run_with_runner

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
name: two-nodes
ipcs: [2]
data: {{source: {{kind: fashion_mnist, root: {fake_fmnist}}}, shard_size: 50}}
methods:
  dm: {{iterations: 3, width: 8, batch_real: 8, checkpoint_every: 0}}
evaluation: {{epochs: 2, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{REPO}")
    # every class group and round waits 3 s before it starts, so the ones submitted together overlap: Ray's
    # SPREAD alone does not promise a second node to a task submitted after the first one has finished
    monkeypatch.setenv("DDFLOW_FAULT_SLEEP", "distill:before:3,evaluate_round:before:3,baseline_round:before:3")
    node_args = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node_args, "include_dashboard": False, "resources": {"head_node": 1}})
    try:
        cluster.add_node(**node_args, resources={"worker_node": 1})
        cluster.wait_for_nodes()
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            one = run_with_runner(str(cfg), [], str(tmp_path / "one"))
            two = run_with_runner(str(cfg), ["class_groups=2", "runner.kind=ray", f"runner.address={cluster.address}",
                                             "runner.num_cpus_per_task=1", "runner.spread=true"],
                                 str(tmp_path / "two"))
        nodes = {cluster.head_node.node_id: "head_node", next(iter(cluster.worker_nodes)).node_id: "worker_node"}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()

    def ran_on(summary: dict, prefix: str) -> set[str | None]:
        return {s["node"] for s in summary["stages"] if s["name"].startswith(prefix)}

    parts = [s for s in two["stages"] if s["name"].startswith("distill/dm/ipc2/classes")]
    assert len(parts) == 2
    node_ids = ran_on(two, "distill/dm/ipc2/classes")
    assert len(node_ids) == 2 and None not in node_ids  # one class group per node
    assert ran_on(two, "evaluate/dm/ipc2/round") | ran_on(two, "baseline/ipc2/round") == node_ids
    assert node_ids == set(nodes)  # the head (custom resource head_node) and the worker (worker_node)
    a = load_synthetic(next(r["artifact"] for r in one["results"] if r["method"] == "dm"))
    b = load_synthetic(next(r["artifact"] for r in two["results"] if r["method"] == "dm"))
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
