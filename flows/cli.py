"""The ``ddflow`` command line: ingest, info, show, run, lineage, serve.

Every user-facing failure prints one line ``error: <problem and fix>`` on stderr and exits with
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from ddcore.errors import DDFlowError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ddflow: orchestrated, reproducible dataset distillation.")
console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


def fail(exc: BaseException) -> None:
    """Print one error line (or the traceback with --debug) and exit 2."""
    if STATE["debug"]:
        raise exc
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def user_errors() -> Iterator[None]:
    """A command's body: a :class:`DDFlowError` raised inside exits through :func:`fail` (one line, code 2)."""
    try:
        yield
    except DDFlowError as exc:
        fail(exc)


class _NoUserErrorTracebacks(logging.Filter):
    """Console-only log filter: Prefect logs a failed flow run with its traceback; for a DDFlowError the
    ``error:`` line says it all (``--debug`` keeps tracebacks, and Prefect's API log records keep them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DDFlowError):
            record.exc_info, record.exc_text = None, None
        return True


def configure_run_logging() -> None:
    """Show ddflow's INFO lines (``ddflow.*`` loggers) on Prefect's console handler, and install
    :class:`_NoUserErrorTracebacks` on the root logger's handlers unless ``--debug`` (they run after
    Prefect's API handler, which keeps the traceback)."""
    ddflow_log = logging.getLogger("ddflow")  # lock waits, rebuilt outputs, cleaned temp folders: show them
    if ddflow_log.level == logging.NOTSET:
        ddflow_log.setLevel(logging.INFO)
    if STATE["debug"]:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoUserErrorTracebacks) for f in handler.filters):
            handler.addFilter(_NoUserErrorTracebacks())


def _version(value: bool) -> None:
    if value:
        from tasks.runtime.refs import code_version, code_version_label

        console.print(f"ddflow {code_version_label(code_version())}")
        raise typer.Exit()


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print ddflow's version (and git commit) and exit.")] = False,
         ) -> None:
    STATE["debug"] = debug or os.environ.get("DDFLOW_DEBUG") == "1"


# The commands live in modules of their own; importing them registers them on ``app``.
from flows import cli_data, cli_run  # noqa: E402,F401
from flows.cli_config import config_app  # noqa: E402 - the `ddflow config` sub-commands (schema, docs)

app.add_typer(config_app, name="config")


def run_cli() -> None:
    """The ``ddflow`` console script (and ``python -m flows.cli``): the app, then a fast exit.

    The exit handlers still run (Prefect's last log and event flushes, the temporary Prefect server's stop,
    logging's shutdown) and stdout/stderr are flushed, but the interpreter's own finalization is skipped with
    ``os._exit``: tearing down torch, Prefect and MLflow took about 2 s of every command (a cached demo re-run
    spent them after printing its summary). Anything but a normal exit (a bug, Ctrl-C) leaves as usual.
    """
    from flows.cli import app as registered  # the module __main__ runs as lacks the sub-modules' commands

    try:
        registered()
    except SystemExit as exc:
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
        if run_exit_handlers is None:
            raise
        run_exit_handlers()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover - `python -m flows.cli`
    run_cli()
