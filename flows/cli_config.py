"""``ddflow config``: the run config's JSON schema and its markdown reference, generated from the models
(:mod:`flows.config_schema`, :mod:`flows.config_docs`). Registered on the main app in :mod:`flows.cli`."""

from __future__ import annotations

import json

import typer

config_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                         help="The run config's JSON schema and reference, generated from its models.")


@config_app.command("schema")
def schema() -> None:
    """Print the JSON schema of a run config (for editor completion and checking).

    Save it, e.g. 'ddflow config schema > ddflow.schema.json', and start the config with the line
    '# yaml-language-server: $schema=ddflow.schema.json' (JSON schema draft 2020-12)."""
    from flows.config_schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@config_app.command("docs")
def docs() -> None:
    """Print the config reference (markdown): every key with its type, default and meaning.

    docs/config.md is this output: regenerate it with 'ddflow config docs > docs/config.md'."""
    from flows.config_docs import render

    typer.echo(render(), nl=False)
