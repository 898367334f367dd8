"""Typed, frozen stage configs: YAML in, canonical JSON + sha256 out.

Every stage has one pydantic model deriving from :class:`StageConfig`. Unknown keys are rejected,
models are immutable, and :meth:`StageConfig.digest` is the sha256 of the canonical JSON dump, which
is what artifact manifests and MLflow params record.
"""

from __future__ import annotations

import hashlib
import json
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or non-mapping is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}; pass the path to an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{line} is not valid YAML; fix the syntax") from None
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
        value = yaml.safe_load(raw) if raw != "" else ""
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
