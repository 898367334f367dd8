"""The run config's reference (``docs/config.md``) and JSON schema, both generated from the pydantic models.

Regenerate the reference with ``ddflow config docs > docs/config.md`` (or ``python -m flows.config_docs >
docs/config.md``); ``tests/test_config_docs.py`` fails while the file and the models disagree. A field's meaning
is, in this order: its ``Field(description=...)``, its attribute docstring (a string right below the field), or
its entry in the ``Attributes:`` / ``Fields:`` / ``Args:`` section of its model's (or a base model's) docstring;
models that document no field yet (the latent stages' configs) take theirs from :mod:`flows.config_notes`. The
JSON schema (:mod:`flows.config_schema`) carries the same texts.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flows.config_notes import NOTES

HEADER = """# Run config reference

<!-- Generated from the pydantic models by `ddflow config docs > docs/config.md`; do not edit by hand
     (tests/test_config_docs.py fails while this file and the models disagree). -->

A run config (`ddflow run CONFIG`) is a YAML mapping validated by frozen pydantic models: an unknown key or a
bad value is one error line naming the key (`docs/errors.md`). `--set key.sub=value` overrides any key below.
For completion and checking in an editor, write the JSON schema once and name it at the top of the config:

```sh
ddflow config schema > ddflow.schema.json
# first line of the YAML:  # yaml-language-server: $schema=ddflow.schema.json
```

Types: `null` is YAML's empty value; `a | b` is either; numbers must be finite (no `.inf`, `.nan`).
"""
SECTION = re.compile(r"^(\s*)(Attributes|Fields|Args):\s*$")
ENTRY = re.compile(r"^([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*:\s+(.*)$")
ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


# -- descriptions ------------------------------------------------------------------------------------------------
def clean(text: str) -> str:
    """Docstring text as one markdown line: ``x`` -> `x`, Sphinx roles -> code, ``None`` -> `null` (as in YAML),
    whitespace collapsed."""
    text = ROLE.sub(lambda m: f"`{m.group(2).rpartition('.')[2] if m.group(1) else m.group(2)}`", text)
    return " ".join(text.replace("``", "`").replace("`None`", "`null`").split())


@functools.cache
def _docstring_parts(cls: type) -> tuple[str, dict[str, str]]:
    """``(summary, {field: entry})`` of a class docstring: the text outside the field sections, and the entries
    of its ``Attributes:`` / ``Fields:`` / ``Args:`` sections (``a, b: text`` documents both)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    summary: list[str] = []
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    section_indent: int | None = None
    entry_indent = 0
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip())
        if (m := SECTION.match(line)) is not None:
            section_indent, current = len(m.group(1)), None
            continue
        if section_indent is not None and line.strip() and indent <= section_indent:
            section_indent, current = None, None
        if section_indent is None:
            summary.append(line)
            continue
        if (m := ENTRY.match(line.strip())) is not None and (current is None or indent <= entry_indent):
            entry_indent, current = indent, [m.group(2)]
            for name in m.group(1).split(","):
                entries[name.strip()] = current
        elif current is not None:
            current.append(line.strip())
    return clean("\n".join(summary)), {k: clean(" ".join(v)) for k, v in entries.items()}


@functools.cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: text}`` of the string literals written right below annotated fields in ``cls``'s body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    out = {}
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[node.target.id] = clean(after.value.value)
    return out


def describe(model: type[BaseModel], name: str) -> str:
    """The meaning of field ``name`` of ``model`` (empty when nothing documents it)."""
    info = model.model_fields[name]
    if info.description:
        return clean(info.description)
    for cls in model.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        found = _attribute_docstrings(cls).get(name) or _docstring_parts(cls)[1].get(name)
        if found:
            return found
        if (cls.__name__, name) in NOTES:
            return clean(NOTES[cls.__name__, name])
    return ""


def summary(model: type[BaseModel]) -> str:
    return _docstring_parts(model)[0]


# -- types, defaults, constraints ----------------------------------------------------------------------------------
def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (through unions, containers and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += [m for m in models_in(arg) if m not in out]
    return out


def type_text(annotation: Any, link: dict[type, tuple[str, str]]) -> str:
    """A short, YAML-minded rendering of a field type (models become links to their section)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        title, anchor = link.get(annotation, (annotation.__name__, ""))
        return f"[{title}]({anchor})" if anchor else title
    if origin is typing.Annotated:
        return type_text(args[0], link)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a) if isinstance(a, str) else a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a, link) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else type_text(a, link) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def yaml_value(value: Any) -> str:
    """A default as it would be written in the YAML."""
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def default_text(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "**required**"
    value = info.get_default(call_default_factory=True, validated_data={})
    return yaml_value(value)


def constraints(info: FieldInfo) -> str:
    """``≥ 1``, ``matches ...``, ``at least 1 item`` from the field's metadata."""
    out = []
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    for meta in info.metadata:
        for attr, sym in symbols.items():
            if getattr(meta, attr, None) is not None:
                out.append(f"{sym} {getattr(meta, attr)}")
        if getattr(meta, "min_length", None):
            out.append(f"at least {meta.min_length} item(s)")
        if getattr(meta, "pattern", None):
            out.append(f"matches `{meta.pattern}`".replace("|", "\\|"))
    return ", ".join(out)


# -- the document --------------------------------------------------------------------------------------------------
def slug(title: str) -> str:
    """GitHub's anchor of a heading."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


class Doc:
    """Markdown sections, one per model, each with a table of its fields; ``links`` maps a model to the title and
    anchor of its section (a model documented once, where it first appears)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.links: dict[type, tuple[str, str]] = {}

    def link(self, model: type, title: str) -> None:
        self.links.setdefault(model, (title, slug(title)))

    def table(self, model: type[BaseModel], *, fixed: dict[str, str] | None = None,
              types_: dict[str, str] | None = None) -> None:
        """The field table of ``model``; ``fixed``/``types_`` replace the default/type shown for some keys."""
        self.lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            kind = (types_ or {}).get(name) or type_text(info.annotation, self.links)
            limits = constraints(info)
            default = (fixed or {}).get(name) or default_text(info)
            text = describe(model, name).replace("|", "\\|")
            self.lines.append(f"| `{name}` | {kind}{', ' + limits if limits else ''} | {default} | {text} |")
        self.lines.append("")

    def section(self, level: int, title: str, model: type[BaseModel], *, notes: tuple[str, ...] = (),
                fixed: dict[str, str] | None = None, types_: dict[str, str] | None = None) -> None:
        """A heading, the model's summary, its field table and notes; then a section per model first met here."""
        nested = [(name, m) for name, info in model.model_fields.items() for m in models_in(info.annotation)
                  if m not in self.links]
        for name, m in nested:
            self.link(m, f"{title}.{name}")
        head = f"Model `{model.__name__}` (`{model.__module__}`)."
        self.lines += [f"{'#' * level} {title}", "", f"{head} {summary(model)}".rstrip(), ""]
        self.table(model, fixed=fixed, types_=types_)
        self.lines += [n for note in notes if note for n in (note, "")]
        for name, m in nested:
            self.section(min(level + 1, 4), f"{title}.{name}", m)


def _kind(spec: type[BaseModel]) -> str:
    return str(typing.get_args(spec.model_fields["kind"].annotation)[0])


def _preset_note(where: str, preset: dict[str, Any], model: type[BaseModel]) -> str:
    changed = [f"`{k}: {json.dumps(v)}`" for k, v in preset.items()
               if k in model.model_fields and model.model_fields[k].default != v]
    return f"With {where}, unset keys take these values instead: {', '.join(changed)}." if changed else ""


def _data(doc: Doc) -> None:
    from ddcore.data.ingestion import IngestConfig

    kinds = models_in(IngestConfig.model_fields["source"].annotation)
    for spec in kinds:
        doc.link(spec, f"data.source kind {_kind(spec)}")
    doc.section(2, "data", IngestConfig, types_={"source": "mapping, one of the [source kinds](#datasource)"})
    doc.lines += ["### data.source", "", "`kind` selects the reader: " + ", ".join(
        f"[`{_kind(s)}`]({doc.links[s][1]})" for s in kinds) + ". The README's source table shows the same "
        "kinds as `ddflow ingest` arguments.", ""]
    for spec in kinds:
        doc.section(4, doc.links[spec][0], spec)


def _methods(doc: Doc) -> None:
    from ddcore.distill.config import NCFM_DEFAULTS
    from ddcore.methods import get_method, method_names

    groups: dict[type, list[str]] = {}
    for name in method_names():
        groups.setdefault(get_method(name).config_type, []).append(name)
    doc.lines += ["## methods", "", "`methods: {name: {key: value, ...}}`: each key is a registered method and its "
                  "mapping overrides that method's config below (`{}` keeps every default). `ipc` comes from the "
                  "top-level `ipcs` and `seed` from the top level (unless the method sets its own); the key fixes "
                  "`method` / `variant`.", ""]
    for config_type, names in groups.items():
        fixed = {k: "the key (" + ", ".join(f"`{get_method(n).fields[k]}`" for n in names) + ")"
                 for k in sorted({k for n in names for k in get_method(n).fields})}
        fixed.update(ipc="each of `ipcs`", seed="top-level `seed`")
        notes = (_preset_note("`ncfm`", NCFM_DEFAULTS, config_type),) if "ncfm" in names else ()
        doc.section(3, f"methods.{'/'.join(names)}", config_type, fixed=fixed, notes=notes)


def render() -> str:
    """The whole reference (``docs/config.md``)."""
    from ddcore.evaluate.protocol import PRESETS, EvalConfig
    from flows.config import RunConfig

    doc = Doc()
    fields = RunConfig.model_fields
    for name, info in fields.items():
        for m in models_in(info.annotation):
            doc.link(m, name)
    doc.lines += [HEADER, "## Top level", "", summary(RunConfig), ""]
    doc.table(RunConfig, types_={"methods": "mapping, see [methods](#methods)",
                                 "data": "[data](#data)"})
    for name, info in fields.items():
        if name == "methods":
            _methods(doc)
        elif name == "data":
            _data(doc)
        for m in models_in(info.annotation) if name != "data" else ():
            if doc.links[m][0] != name:
                continue
            presets = [_preset_note(f"`protocol: {p}`", v, m) for p, v in PRESETS.items() if p != "dm"]
            doc.section(2, name, m, notes=tuple(presets) if m is EvalConfig else ())
    return "\n".join(doc.lines).rstrip() + "\n"


def undocumented() -> Iterator[str]:
    """``Model.field`` of every field the reference would leave without a meaning."""
    from flows.config_schema import all_models

    for model in all_models():
        for name in model.model_fields:
            if not describe(model, name):
                yield f"{model.__name__}.{name}"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
