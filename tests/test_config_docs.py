"""The generated config reference (docs/config.md) and JSON schema (``ddflow config docs`` / ``schema``): the file is
what the models generate, every key of every section has a meaning, and the schema accepts the shipped configs
and refuses what validation refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "config.md"
REGENERATE = "regenerate it: .venv/bin/ddflow config docs > docs/config.md (or python -m flows.config_docs)"
runner = CliRunner()


def test_docs_config_md_is_what_the_models_generate() -> None:
    """docs/config.md equals ``ddflow config docs`` (through the real CLI)."""
    result = runner.invoke(app, ["config", "docs"])
    assert result.exit_code == 0, result.output
    assert DOC.read_text() == result.stdout, f"docs/config.md is out of date with the config models; {REGENERATE}"


def test_every_field_of_every_section_is_documented() -> None:
    """Every field of every model a run config can hold (methods and source kinds included) has a meaning; the
    reference shows each section: the top-level keys, every source kind and every registered method."""
    from ddcore.data.ingestion import IngestConfig
    from ddcore.methods import method_names
    from flows.config_docs import models_in, render, undocumented

    missing = list(undocumented())
    assert missing == [], (f"fields without a meaning: {missing}; add a Field(description=...), an attribute docstring "
                           f"or an 'Attributes:' entry in the model's docstring, then {REGENERATE}")
    text = render()
    for name, info in RunConfig.model_fields.items():
        assert f"| `{name}` |" in text
        if models_in(info.annotation) or name == "methods":
            assert f"\n## {name}\n" in text, name
    for spec in models_in(IngestConfig.model_fields["source"].annotation):
        kind = spec.model_fields["kind"].default
        assert f"\n#### data.source kind {kind}\n" in text
    for name in method_names():
        assert any(name in line.split("methods.", 1)[1].split("/") for line in text.splitlines()
                   if line.startswith("### methods."))


def test_config_docs_are_one_line_per_row() -> None:
    """Every table row is one line with four cells (no stray '|' breaks a table)."""
    from flows.config_docs import render

    for line in render().splitlines():
        if line.startswith("| `"):
            cells = line.replace("\\|", "").split("|")[1:-1]
            assert len(cells) == 4, line


@pytest.fixture(scope="module")
def schema() -> dict:
    result = runner.invoke(app, ["config", "schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_schema_accepts_the_shipped_configs(schema: dict) -> None:
    """``ddflow config schema`` prints a valid JSON schema (draft 2020-12) that accepts configs/demo.yaml and every
    other shipped config, and describes their keys."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], (path.name, errors)
    assert set(schema["properties"]) == set(RunConfig.model_fields) and schema["required"] == ["data"]
    assert schema["properties"]["methods"]["properties"]["dm"]["properties"]["iterations"]["description"]


def test_schema_refuses_what_validation_refuses(schema: dict) -> None:
    """Unknown keys (anywhere, methods included), a method's fixed field and a bad source kind are schema errors."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    source = {"kind": "artifact", "path": "artifacts/fmnist"}
    assert not list(validator.iter_errors({"data": {"source": source}, "methods": {"dm": {"iterations": 3}}}))
    for bad in ({"data": {"source": source, "shards": 3}}, {"data": {"source": source}, "methods": {"dmm": {}}},
                {"data": {"source": source}, "methods": {"dm": {"method": "hdd"}}},
                {"data": {"source": {"kind": "tarball", "path": "x"}}}, {"name": "x"},
                {"data": {"source": {**source, "sha256": "abc"}}}):
        assert list(validator.iter_errors(bad)), bad
