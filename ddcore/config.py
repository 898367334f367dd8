"""Typed, frozen stage configs: YAML in, canonical JSON + sha256 out.

Every stage has one pydantic model deriving from :class:`StageConfig`. Unknown keys are rejected,
models are immutable, and :meth:`StageConfig.digest` is the sha256 of the canonical JSON dump, which
is what artifact manifests and MLflow params record.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ddcore.errors import ConfigError

T = TypeVar("T", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage config: frozen, strict about unknown keys, no infinite or NaN numbers, hashable to a
    digest."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    def canonical_json(self) -> str:
        """JSON with sorted keys and no whitespace; stable across runs and machines."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 hex digest of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_mapping(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
        """Validate ``data``; raise :class:`ConfigError` with one line naming the bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where)) from None


def format_validation_error(exc: ValidationError, where: str) -> str:
    """Turn a pydantic error into one line: ``<where>: key 'a.b': <problem> (got <value>)``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key '{loc}'; remove it or check its spelling"
    if err["type"] == "missing":
        return f"{where}: missing required key '{loc}'; add it"
    got = err.get("input")
    got_s = repr(got)
    if len(got_s) > 60:
        got_s = got_s[:57] + "..."
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: bad value for '{loc}': {err['msg']} (got {got_s}){more}"


MAX_DEPTH = 64
"""Deepest nesting of lists and mappings a config may have (ddflow's own configs need four levels)."""
MAX_VALUES = 100_000
"""Most values a config may expand to (YAML aliases can repeat a list exponentially: a "billion laughs")."""


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with every failure as one :class:`ConfigError` line naming ``where``: bad syntax,
    a tag other than plain YAML's (``!!python/...`` is never constructed, let alone run), nesting deeper than
    :data:`MAX_DEPTH`, or aliases expanding to more than :data:`MAX_VALUES` values."""
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        tag = re.search(r"'([^']+)'", exc.problem or "")
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "an unknown tag"
        raise ConfigError(f"{where}:{line} uses the YAML tag {shown}, which ddflow never loads (nothing is "
                          "constructed or run); write plain values: strings, numbers, lists and mappings") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}:{line} is not valid YAML; fix the syntax") from None
    except RecursionError:
        data, depth = None, MAX_DEPTH + 1
    else:
        depth, values = _extent(data)
        if values > MAX_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_VALUES} values (YAML aliases repeating lists?); "
                              "write the config out without such aliases")
    if depth > MAX_DEPTH:
        raise ConfigError(f"{where} nests lists or mappings more than {MAX_DEPTH} levels deep; a ddflow config "
                          "needs a few levels")
    return data


def _extent(data: Any) -> tuple[int, int]:
    """``(nesting depth, number of values)`` of parsed YAML, counting an aliased node at each use; iterative, and
    each shared node is measured once."""
    measured: dict[int, tuple[int, int]] = {}
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in measured:
            continue
        kids = [c for c in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())
                if isinstance(c, dict | list)]
        if not ready:
            stack.append((node, True))
            stack.extend((c, False) for c in kids if id(c) not in measured)
            if len(stack) > 4 * MAX_VALUES:
                return MAX_DEPTH + 1, MAX_VALUES + 1
            continue
        depth = 1 + max((measured[id(c)][0] for c in kids), default=0)
        size = (len(node) if isinstance(node, dict | list) else 1) + sum(measured[id(c)][1] for c in kids)
        measured[id(node)] = (min(depth, MAX_DEPTH + 1), min(size, MAX_VALUES + 1))
    return measured.get(id(data), (0, 1))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a binary file, invalid or unsafe YAML or a non-mapping is a
    :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}; pass the path to an existing YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not a text file (byte {exc.start} is not UTF-8); pass a YAML config") from None
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a nested mapping copy."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. distill.ipc=10)")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override '{item}'") if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return out
