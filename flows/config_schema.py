"""The JSON schema of a run config (``ddflow config schema``), for editors: e.g. the YAML language server reads
``# yaml-language-server: $schema=ddflow.schema.json`` at the top of a config.

It is pydantic's validation schema of :class:`~flows.config.RunConfig`, with two additions: every field gets the
meaning the config reference shows (:func:`flows.config_docs.describe`), and ``methods`` lists each registered
method with its own typed config (in :class:`RunConfig` it is a plain mapping, validated through the method
registry), where the key fixes ``method`` / ``variant`` and no key is required.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/$defs/{model}"


def all_models() -> list[type[BaseModel]]:
    """Every model a run config can hold: :class:`RunConfig`'s tree and each registered method's config tree."""
    from ddcore.methods import get_method, method_names
    from flows.config import RunConfig
    from flows.config_docs import models_in

    found: list[type[BaseModel]] = []

    def walk(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for info in model.model_fields.values():
            for m in models_in(info.annotation):
                walk(m)

    walk(RunConfig)
    for name in method_names():
        walk(get_method(name).config_type)
    return found


def _describe(definitions: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
    """Put the reference's texts into schema ``definitions`` (name -> schema of the model ``models[name]``):
    the model's summary and each field's meaning."""
    from flows.config_docs import describe, summary

    for name, definition in definitions.items():
        model = models.get(name)
        if model is None:
            continue
        definition["description"] = summary(model) or definition.get("description", "")
        for field, prop in definition.get("properties", {}).items():
            text = describe(model, field) if field in model.model_fields else ""
            if text:
                prop["description"] = text


def _method_definitions() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(properties of methods, $defs they use)``: one schema per registered method."""
    from ddcore.methods import get_method, method_names

    props: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name in method_names():
        method = get_method(name)
        schema = method.config_type.model_json_schema(ref_template=REF)
        defs.update(schema.pop("$defs", {}))
        schema.pop("required", None)
        schema.pop("title", None)
        for key, value in method.fields.items():
            schema["properties"][key] = {"const": value, "default": value}
        props[name] = schema
    return props, defs


def json_schema() -> dict[str, Any]:
    """The run config's JSON schema (draft 2020-12, as pydantic writes it)."""
    from ddcore.methods import get_method
    from flows.config import RunConfig

    schema = RunConfig.model_json_schema(ref_template=REF)
    props, defs = _method_definitions()
    for key, value in defs.items():
        schema.setdefault("$defs", {}).setdefault(key, value)
    _describe(schema["$defs"], {m.__name__: m for m in all_models()})
    _describe({"RunConfig": schema}, {"RunConfig": RunConfig})
    _describe(props, {name: get_method(name).config_type for name in props})
    for name, prop in props.items():
        prop["description"] = f"Method `{name}` ({get_method(name).config_type.__name__}). {prop['description']}"
    schema["properties"]["methods"] = {
        "type": "object", "default": {}, "properties": props, "additionalProperties": False,
        "description": schema["properties"]["methods"].get("description", ""),
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "ddflow run config"}
