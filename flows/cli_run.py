"""``ddflow`` commands that run flows: run, plan, evaluate, lineage, serve (registered on :data:`flows.cli.app`),
and the environment Prefect's temporary server is started with."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ddcore.errors import DDFlowError
from flows.cli import app, configure_run_logging, console, err_console, fail, user_errors

if TYPE_CHECKING:
    from flows.temp_server import RunServer

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline YAML config.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set ipcs=[1,10]")]
RootOption = Annotated[str | None, typer.Option(help="Artifact root (default $DDFLOW_ROOT or ./artifacts).")]


def print_summary(summary: dict) -> None:
    """The results table of a pipeline run (accuracies in %; IOR/HLR as mean ± std over rounds, in points)."""
    rows = summary["results"]
    scores = any(r.get("hlr") is not None for r in rows)
    table = Table(title=f"run {summary['run']}  (config {summary['config_digest'][:12]})")
    for col in ("method", "IPC", "accuracy", "random", "IOR", *(("HLR", "LRS") if scores else ()), "time"):
        table.add_column(col, justify="left" if col == "method" else "right")

    def pct(m: float | None, s: float | None = None, sign: str = "") -> str:
        if m is None:
            return "-"
        return f"{100 * m:{sign}.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")

    for r in rows:
        extra = (pct(r.get("hlr"), r.get("hlr_std")), "-" if r.get("lrs") is None else f"{r['lrs']:.3f}") \
            if scores else ()
        table.add_row(r["method"], str(r["ipc"]), pct(r["acc_mean"], r["acc_std"]),
                      pct(r["random_mean"], r["random_std"]), pct(r["ior"], r.get("ior_std"), "+"), *extra,
                      f"{r['seconds']:.0f}s")
    console.print(table)
    for r in rows:
        stored, per_class, base = r.get("stored_ipc"), r.get("images_per_class"), r.get("baseline_ipc")
        if stored is not None and per_class is not None and per_class != stored:
            console.print(f"  {r['method']} IPC {r['ipc']}: {stored} stored images per class decode into {per_class}")
        if base is not None and stored is not None and base != stored:
            console.print(f"  {r['method']} IPC {r['ipc']}: random baseline of {base} per class, set stores {stored}")
        if r.get("hlr_from") not in (None, r["method"]):
            console.print(f"  {r['method']} IPC {r['ipc']}: HLR from the hard-label row {r['hlr_from']}")
    if summary.get("ior_baseline"):
        console.print(f"IOR baseline: {summary['ior_baseline']}")
    cached = sum(1 for s in summary["stages"] if s["cached"])
    console.print(f"stages: {len(summary['stages'])} ({cached} cached)   total {summary['seconds']:.1f}s")
    tracking = summary.get("tracking") or {}
    if tracking.get("lost"):
        console.print(f"[yellow]MLflow: {tracking['lost']} tracking records not written "
                      f"({tracking.get('error', 'store unavailable')}); the lineage is complete in ref.json[/]")
    elif tracking.get("parent_run_id"):
        console.print(f"MLflow: run {tracking['parent_run_id']} in experiment {tracking['experiment']!r} "
                      f"at {tracking['uri']}")
        if tracking.get("experiment_id") and str(tracking["uri"]).startswith("sqlite:"):
            console.print(f"  view: mlflow ui --backend-store-uri {tracking['uri']}, then open "
                          f"#/experiments/{tracking['experiment_id']}/runs/{tracking['parent_run_id']}"
                          "?workflowType=machine_learning", soft_wrap=True)
    plot = f"{summary['report']}/accuracy_vs_ipc.png" if summary.get("report") else None
    if plot and ("://" in plot or Path(plot).is_file()):
        console.print(f"plot: {plot}")


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOption = None,
    root: RootOption = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Recompute STAGE and what depends on it.")]
    = None,
) -> None:
    """Run the pipeline described by CONFIG (cached stages are not recomputed)."""
    with flow_command() as start_server:
        server = start_server(root)  # first: Prefect's temporary server starts while the rest imports
        from flows.config import load_config

        cfg = load_config(str(config), overrides or [])
        from flows.distill import run_with_runner

        configure_run_logging()
        from flows.cli_progress import stage_bars

        with server.pointed(), stage_bars(err_console):
            summary = run_with_runner(str(config), overrides or [], root, force or [])
    print_summary(summary)
    from flows.roots import default_root

    console.print(f"summary: {default_root(root)}/runs/{cfg.name}/summary.json")


@app.command()
def plan(
    config: ConfigArg,
    overrides: SetOption = None,
    root: RootOption = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Show STAGE (and what depends on it) as forced.")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="table | mermaid | json")] = "table",
) -> None:
    """Show the run plan of CONFIG: every stage node and whether it is cached, to compute or forced (runs nothing)."""
    with user_errors():
        from ddcore.errors import ConfigError
        from flows.config import load_config
        from flows.plan_view import counts, node_states, plan_for_store, to_json, to_mermaid
        from flows.roots import default_root
        from tasks.runtime.store import ArtifactStore

        if fmt not in ("table", "mermaid", "json"):
            raise ConfigError(f"--format: unknown format {fmt!r}; choose table, mermaid or json")
        cfg = load_config(str(config), overrides or [])
        store = ArtifactStore(default_root(root))
        the_plan = plan_for_store(cfg, store)
        states = node_states(the_plan, store, force or [])
    if fmt == "mermaid":
        print(to_mermaid(states))
        return
    if fmt == "json":
        print(to_json(the_plan, states))
        return
    colour = {"cached": "green", "to compute": "yellow", "forced": "red"}
    table = Table(title=f"plan {the_plan.name}  (config {cfg.digest()[:12]}, root {store.root})")
    for col in ("node", "stage", "state", "key", "inputs"):
        table.add_column(col)
    for n in states:
        srcs = list(dict.fromkeys(n.inputs))
        shown = ", ".join(srcs) if len(srcs) <= 3 else f"{', '.join(srcs[:2])}, ... ({len(srcs)} inputs)"
        table.add_row(n.id, n.stage, f"[{colour[n.state]}]{n.state}[/]", n.key or "-", shown)
    console.print(table)
    c = counts(states)
    console.print(f"{len(states)} nodes: {c['cached']} cached, {c['to compute']} to compute, {c['forced']} forced; "
                  f"{len(the_plan.rows)} report rows")


@app.command()
def evaluate(
    synthetic: Annotated[str, typer.Argument(help="Synthetic-set artifact folder to evaluate.")],
    data: Annotated[str | None, typer.Option("--data", help="Dataset artifact with the real test split (required).")]
    = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config whose 'evaluation' recipe is used "
                                                "(required).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set evaluation.num_eval=3")]
    = None,
    root: RootOption = None,
) -> None:
    """Evaluate any synthetic set (with the random baseline of its IPC) under a config's recipe."""
    with flow_command() as start_server:
        from ddcore.errors import ConfigError
        from flows.config import load_config

        if data is None or config is None:  # checked here: a missing option is then one error line, too
            raise ConfigError("missing option --data; pass the dataset artifact with the real test split"
                              if data is None else
                              "missing option --config; pass the run config whose evaluation recipe is used")
        from tasks.evaluate import check_evaluation_inputs

        load_config(str(config), overrides or [])
        check_evaluation_inputs(synthetic, data)  # before Prefect starts: a wrong path or a mismatch fails at once
        server = start_server(root)
        from flows.reuse import evaluate_flow

        configure_run_logging()
        with server.pointed():
            summary = evaluate_flow(synthetic, data, str(config), overrides or [], root)
    print_summary(summary)


@contextlib.contextmanager
def flow_command() -> Iterator[Callable[[str | None], RunServer]]:
    """The body of a command that runs a flow. It yields ``start_server(root)``, which starts the command's
    :class:`~flows.temp_server.RunServer`; the server is closed on the way out. A :class:`DDFlowError`, or
    Prefect failing to start its temporary server, exits with one error line (:func:`fail`)."""
    servers: list[RunServer] = []

    def start_server(root: str | None) -> RunServer:
        from flows.temp_server import RunServer

        servers.append(RunServer(root))
        return servers[-1]

    try:
        yield start_server
    except DDFlowError as exc:
        fail(exc)
    except RuntimeError as exc:
        fail(prefect_start_error(exc))
    finally:
        for server in servers:
            server.close()


def prefect_start_error(exc: RuntimeError) -> DDFlowError:
    """Prefect's "Timed out while attempting to connect to ephemeral Prefect API server" (a server Prefect
    started itself) as one line; any other RuntimeError is re-raised: it is a bug, and its traceback is wanted."""
    if "ephemeral Prefect API server" not in str(exc):
        raise exc
    from flows.temp_server import start_error

    return start_error()


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="Digest or stage-key prefix, artifact folder, or MLflow run id.")],
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tree as JSON.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI to resolve run ids (default "
                                                     "$MLFLOW_TRACKING_URI or <root>/mlflow.db if present).")]
    = None,
) -> None:
    """Show where an artifact comes from: the chain of stages back to the source data (from ref.json files)."""
    with user_errors():
        from flows.roots import default_root
        from tasks.runtime.lineage import build_lineage, lineage_json, lineage_tree, resolve_record
        from tasks.runtime.store import ArtifactStore
        from tasks.runtime.tracking import Tracker

        store = ArtifactStore(default_root(root))
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and store.is_local and Path(store.root, "mlflow.db").is_file():
            uri = f"sqlite:///{store.root}/mlflow.db"
        node = build_lineage(store, resolve_record(store, ref, tracker=Tracker(uri) if uri else None))
    if as_json:
        console.print_json(json.dumps(lineage_json(node)))
    else:
        console.print(lineage_tree(node))


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML config to run on the schedule.")],
    cron: Annotated[str | None, typer.Option(help="Cron schedule (UTC), e.g. '0 3 * * *'.")] = None,
    interval: Annotated[float | None, typer.Option(help="Run every N seconds.")] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default from the config and schedule).")]
    = None,
    entrypoint: Annotated[str, typer.Option(help="Flow to serve, path.py:function.")]
    = "flows/distill.py:distill_flow",
    overrides: SetOption = None,
    root: Annotated[str | None, typer.Option(help="Artifact root passed to the flow.")] = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="Stage to recompute on every run.")] = None,
    limit: Annotated[int, typer.Option(help="Concurrent runs of this serving process.")] = 1,
) -> None:
    """Serve CONFIG on a cron or interval schedule (needs 'prefect server start' and PREFECT_API_URL)."""
    with user_errors():
        from flows.temp_server import prefect_env

        prefect_env()
        from flows.serve import serve as serve_config

        serve_config(config, cron=cron, interval=interval, name=name, entrypoint=entrypoint, overrides=overrides,
                     root=root, force=force, limit=limit)
