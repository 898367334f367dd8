"""Serving the pipeline on a schedule from one long-lived process (``flow.to_deployment`` + ``prefect.serve``).

Schedules need a real Prefect server: the temporary (ephemeral) API never creates scheduled runs. So
:func:`serve` refuses to start without a reachable ``PREFECT_API_URL``. Each scheduled run executes in
a subprocess of the serving process. See ``deployments/README.md`` for the work-pool/worker variant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ddcore.errors import DDFlowError
from flows.runners import RunnerError

DEFAULT_ENTRYPOINT = "flows/distill.py:distill_flow"
REPO = Path(__file__).resolve().parents[1]


class ServeError(DDFlowError):
    """A deployment cannot be built or served as asked."""


def load_flow(entrypoint: str) -> Any:
    """The flow object at ``path/to/file.py:flow_fn`` (relative to the CWD or the repo) or ``module:flow_fn``."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, func = entrypoint.rpartition(":")
    if not path or not func:
        raise ServeError(f"entrypoint {entrypoint!r} must look like flows/distill.py:distill_flow")
    if path.endswith(".py") and not Path(path).exists() and (REPO / path).exists():
        entrypoint = f"{REPO / path}:{func}"
    if path.endswith(".py") and not Path(entrypoint.rpartition(":")[0]).exists():
        raise ServeError(f"flow file {path} not found; run from the repository root or pass --entrypoint")
    try:
        return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    except Exception as exc:  # noqa: BLE001 - import errors of user code: one line
        raise ServeError(f"cannot load flow {entrypoint}: {type(exc).__name__}: {exc}") from None


def deployment_name(config_path: str | Path, *, cron: str | None, interval: float | None) -> str:
    """``<config stem>-nightly`` style names: ``demo-every-3600s``, ``imagenet1k-cron-0-3-x-x-x``."""
    stem = Path(config_path).stem
    if cron:
        return f"{stem}-cron-" + re.sub(r"[^0-9A-Za-z]+", "-", cron.replace("*", "x")).strip("-")
    return f"{stem}-every-{interval:g}s"


def check_server() -> str:
    """The Prefect API URL after a health check.

    Raises:
        RunnerError: no ``PREFECT_API_URL`` (the temporary API never schedules) or the server does not answer.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise RunnerError("schedules need a Prefect server: run 'prefect server start' and export "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise RunnerError(f"Prefect server at {url} does not answer ({type(problem).__name__}); start it with "
                          "'prefect server start' or fix PREFECT_API_URL")
    return url


def build_deployment(config_path: str | Path, *, cron: str | None = None, interval: float | None = None,
                     name: str | None = None, entrypoint: str = DEFAULT_ENTRYPOINT,
                     overrides: list[str] | None = None, root: str | None = None,
                     force: list[str] | None = None, flow: Any = None) -> Any:
    """A ``RunnerDeployment`` running ``entrypoint`` (``distill_flow``'s signature) on ``config_path``.

    Exactly one of ``cron`` (e.g. ``"0 3 * * *"``, UTC) or ``interval`` (seconds) must be given.
    """
    if (cron is None) == (interval is None):
        raise ServeError("give exactly one schedule: --cron '0 3 * * *' or --interval SECONDS")
    if interval is not None and interval <= 0:
        raise ServeError(f"--interval must be a positive number of seconds, got {interval:g}")
    cfg = Path(config_path).expanduser()
    if not cfg.is_file():
        raise ServeError(f"config file not found: {cfg}; pass the path to an existing YAML file")
    flow_obj = flow if flow is not None else load_flow(entrypoint)
    params: dict[str, Any] = {"config_path": str(cfg.resolve()), "overrides": list(overrides or []),
                              "root": root, "force": list(force or [])}
    schedule: dict[str, Any] = {"cron": cron} if cron else {"interval": interval}
    return flow_obj.to_deployment(name=name or deployment_name(cfg, cron=cron, interval=interval),
                                  parameters=params, tags=["ddflow"], **schedule)


def serve(config_path: str | Path, *, cron: str | None = None, interval: float | None = None,
          name: str | None = None, entrypoint: str = DEFAULT_ENTRYPOINT, overrides: list[str] | None = None,
          root: str | None = None, force: list[str] | None = None, limit: int | None = 1) -> None:
    """Register a scheduled deployment of the pipeline on ``config_path`` and serve it until interrupted.

    ``limit`` caps concurrent runs of this process (default 1: runs queue up rather than share a GPU).
    """
    from prefect import serve as prefect_serve

    check_server()
    deployment = build_deployment(config_path, cron=cron, interval=interval, name=name, entrypoint=entrypoint,
                                  overrides=overrides, root=root, force=force)
    prefect_serve(deployment, limit=limit)
