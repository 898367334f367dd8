"""Task-runner selection: threads on one box (explicit devices) or Ray (with a refusing GPU check).

* ``threads`` (default): Prefect's ``ThreadPoolTaskRunner``. Stages get an explicit device from
  :func:`assign_devices` (round robin over ``cuda:i``, ``cpu`` without CUDA); stage tasks made with
  ``tags=("gpu",)`` can be throttled by the Prefect tag concurrency limit ``gpu``
  (:func:`ensure_tag_limit`, or ``prefect concurrency-limit create gpu 1``).
* ``ray``: ``prefect_ray.RayTaskRunner``; per-task resources via :func:`stage_options`
  (``remote_options(num_gpus=..., num_cpus=...)`` around ``.submit``). Two pitfalls are turned into
  one-line errors (:class:`RunnerError`) at start-up instead of silent hangs or slowness:

  - a task asking for more GPUs than the cluster has would wait forever: :func:`check_ray_resources`
    refuses when ``ray.cluster_resources()["GPU"]`` is below ``num_gpus_per_task``;
  - without ``PREFECT_API_URL`` every Ray worker starts its own temporary Prefect server: kind ``ray``
    requires a real server (``prefect server start``) and exports its URL before ``ray.init`` so the
    workers inherit it;
  - ``ray.init`` on an address nobody answers retries for minutes: :func:`check_ray_reachable` tries a TCP
    connection to the head first (``runner.address``, or ``RAY_ADDRESS`` for ``auto``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.errors import DDFlowError


class RunnerError(DDFlowError):
    """The task runner cannot start as configured (missing server, resources the cluster lacks...)."""


class RunnerConfig(StageConfig):
    """How stage tasks are executed.

    Attributes:
        kind: ``threads`` (one process, Prefect's thread pool) or ``ray``.
        max_workers: thread-pool size (threads; ``None`` = Prefect's default).
        address: Ray cluster address (``ray://host:10001`` or ``auto``); ``None`` starts a local cluster.
        num_cpus: CPUs of a local Ray cluster (``None`` = all).
        num_gpus: GPUs of a local Ray cluster (``None`` = detected).
        num_gpus_per_task: GPUs each GPU stage asks Ray for (0 = CPU only; fractions allowed).
        num_cpus_per_task: CPUs each stage asks Ray for.
        gpu_concurrency: when set, the Prefect tag concurrency limit ``gpu`` is set to this.
        prefect_api_url: exported as ``PREFECT_API_URL`` when the environment has none (ray).
        include_dashboard: start Ray's dashboard.
        object_store_memory_mb: Ray object store size of a local cluster.
        spread: place stage tasks with Ray's ``SPREAD`` strategy, across the cluster's nodes, instead of Ray's
            default (fill the local node first): independent tasks (class groups, evaluation rounds) then run on
            different nodes even when each is short.
    """

    kind: Literal["threads", "ray"] = "threads"
    max_workers: int | None = Field(None, ge=1)
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    num_gpus_per_task: float = Field(0.0, ge=0)
    num_cpus_per_task: float = Field(1.0, gt=0)
    gpu_concurrency: int | None = Field(None, ge=1)
    prefect_api_url: str | None = None
    include_dashboard: bool = False
    object_store_memory_mb: int | None = Field(None, ge=64)
    spread: bool = False


def cuda_devices() -> list[str]:
    """``["cuda:0", ...]`` for the visible GPUs, ``[]`` without CUDA."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def assign_devices(n_tasks: int, *, devices: list[str] | None = None) -> list[str]:
    """Devices for ``n_tasks`` concurrent tasks: round robin over ``devices`` (default: the visible
    GPUs), ``"cpu"`` for every task when there are none."""
    if n_tasks < 0:
        raise ValueError("n_tasks must be >= 0")
    pool = cuda_devices() if devices is None else list(devices)
    if not pool:
        return ["cpu"] * n_tasks
    return [pool[i % len(pool)] for i in range(n_tasks)]


def build_task_runner(cfg: RunnerConfig) -> Any:
    """The Prefect task runner for ``cfg`` (for ``ray``, call inside :func:`runner_session`)."""
    if cfg.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=cfg.address, init_kwargs=ray_init_kwargs(cfg))


def ray_init_kwargs(cfg: RunnerConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"include_dashboard": cfg.include_dashboard}
    if cfg.address is None:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
        if cfg.object_store_memory_mb is not None:
            kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
    return kwargs


def require_api_url(cfg: RunnerConfig) -> str:
    """The Prefect API URL Ray workers will use; exported from ``cfg.prefect_api_url`` when unset.

    Raises:
        RunnerError: none is configured, or this process talks to a different API than the environment.
    """
    env = os.environ.get("PREFECT_API_URL")
    if not env and cfg.prefect_api_url:
        env = os.environ["PREFECT_API_URL"] = cfg.prefect_api_url
    if not env:
        raise RunnerError(
            "runner kind 'ray' needs a Prefect server (else every Ray worker starts its own): run "
            "'prefect server start' and export PREFECT_API_URL=http://127.0.0.1:4200/api, or set runner.prefect_api_url"
        )
    from prefect.settings import get_current_settings

    current = get_current_settings().api.url
    if current and current.rstrip("/") != env.rstrip("/"):
        raise RunnerError(f"this process uses the Prefect API {current} but PREFECT_API_URL (what Ray workers "
                          f"inherit) is {env}; make them the same")
    return env


def check_ray_resources(num_gpus_per_task: float, num_cpus_per_task: float = 0.0) -> dict[str, float]:
    """Refuse GPU/CPU requests the connected Ray cluster cannot satisfy (Ray would wait forever).

    Returns:
        ``ray.cluster_resources()``.

    Raises:
        RunnerError: Ray is not initialised, or the cluster has fewer GPUs/CPUs than one task asks for.
    """
    import ray

    if not ray.is_initialized():
        raise RunnerError("Ray is not initialised; start the flow with the Ray task runner (runner.kind=ray)")
    resources = {k: float(v) for k, v in ray.cluster_resources().items()}
    gpus = resources.get("GPU", 0.0)
    if num_gpus_per_task > gpus:
        raise RunnerError(
            f"Ray cluster has {gpus:g} GPU(s) but each GPU stage asks for num_gpus={num_gpus_per_task:g} "
            "(Ray would wait forever); set runner.num_gpus_per_task=0 to run on CPU or connect to a cluster with GPUs"
        )
    cpus = resources.get("CPU", 0.0)
    if num_cpus_per_task > cpus:
        raise RunnerError(f"Ray cluster has {cpus:g} CPU(s) but each stage asks for num_cpus={num_cpus_per_task:g}; "
                          "lower runner.num_cpus_per_task")
    return resources


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """The ``(host, port)`` that ``ray.init(address=address)`` contacts, or ``None`` when Ray resolves it itself.

    ``None`` / ``auto`` take ``RAY_ADDRESS`` when it is set (as Ray does); without it, ``auto`` is left to Ray
    (the cluster started with ``ray start`` on this machine) and ``None`` starts a local cluster.
    ``ray://host:port`` (Ray Client) gives ``host:port`` too.

    Raises:
        RunnerError: the address is not ``host:port``.
    """
    addr = address
    if addr in (None, "auto"):
        addr = os.environ.get("RAY_ADDRESS") or addr
    if addr is None or addr in ("auto", "local"):
        return None
    hostport = addr.split("://", 1)[1] if "://" in addr else addr
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RunnerError(f"Ray address {addr!r} is not host:port; use e.g. runner.address=10.0.0.1:6379, "
                          "ray://10.0.0.1:10001 or auto")
    return host.strip("[]"), int(port)


def check_ray_reachable(address: str | None, *, timeout: float = 5.0) -> None:
    """Refuse, in one line and within ``timeout`` seconds, a Ray head that does not accept connections
    (``ray.init`` would retry for minutes); a no-op when Ray resolves or starts the cluster itself.

    Raises:
        RunnerError: nothing listens at the head's address.
    """
    target = ray_endpoint(address)
    if target is None:
        return
    host, port = target
    from_env = address in (None, "auto") and bool(os.environ.get("RAY_ADDRESS"))
    origin = f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}" if from_env else f"runner.address={address}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RunnerError(f"no Ray cluster answers at {host}:{port} ({origin}: {reason}); start the head there with "
                          f"'ray start --head --port {port}' or point runner.address / RAY_ADDRESS at a running "
                          "head") from None


def connect_ray(cfg: RunnerConfig) -> None:
    """``ray.init`` for ``cfg`` (after :func:`check_ray_reachable`); Ray's connection errors become one line.

    Raises:
        RunnerError: the head is unreachable, or ``auto`` finds no cluster.
    """
    import ray

    check_ray_reachable(cfg.address)
    try:
        ray.init(address=cfg.address, namespace="prefect", **ray_init_kwargs(cfg))
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunnerError(f"cannot connect to a Ray cluster (runner.address={cfg.address}): {first.rstrip('.')}; "
                          "run 'ray start --head' on the head node, or export RAY_ADDRESS=<head-host>:6379") from None


def describe_ray_cluster() -> str:
    """One line on the connected Ray cluster: live nodes, CPUs, GPUs and custom resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = {k: float(v) for k, v in ray.cluster_resources().items()}
    builtin = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = sorted(k for k in res if k not in builtin and not k.startswith("node:"))
    extra = f", resources {', '.join(f'{k}={res[k]:g}' for k in custom)}" if custom else ""
    return f"Ray cluster: {len(nodes)} node(s), {res.get('CPU', 0.0):g} CPU, {res.get('GPU', 0.0):g} GPU{extra}"


@contextmanager
def runner_session(cfg: RunnerConfig) -> Iterator[Any]:
    """Set up and yield the task runner for ``cfg``; for ``ray``: check the API URL, start or connect to
    Ray (workers inherit ``PREFECT_API_URL``; an unreachable head is refused in one line), refuse impossible
    GPU requests, and shut Ray down on exit when this session started it.
    Use: ``with runner_session(cfg) as tr: my_flow.with_options(task_runner=tr)(...)``.
    """
    if cfg.kind == "threads":
        if cfg.gpu_concurrency is not None:
            ensure_tag_limit("gpu", cfg.gpu_concurrency)
        yield build_task_runner(cfg)
        return
    import ray

    require_api_url(cfg)
    started = False
    if not ray.is_initialized():
        connect_ray(cfg)
        started = True
    try:
        check_ray_resources(cfg.num_gpus_per_task, cfg.num_cpus_per_task)
        if cfg.gpu_concurrency is not None:
            ensure_tag_limit("gpu", cfg.gpu_concurrency)
        yield build_task_runner(cfg)
    finally:
        if started:
            ray.shutdown()


def stage_options(cfg: RunnerConfig, *, gpu: bool = True) -> AbstractContextManager[Any]:
    """Context for ``.submit`` of one stage: Ray resources (``num_gpus`` only for GPU stages), or nothing."""
    if cfg.kind != "ray":
        return nullcontext()
    from prefect_ray.context import remote_options

    opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_task}
    if cfg.spread:
        opts["scheduling_strategy"] = "SPREAD"
    if gpu and cfg.num_gpus_per_task > 0:
        opts["num_gpus"] = cfg.num_gpus_per_task
    return remote_options(**opts)


def ensure_tag_limit(tag: str, limit: int) -> None:
    """Create or update the Prefect tag concurrency limit ``tag`` (needs a reachable Prefect API)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
