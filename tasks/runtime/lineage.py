"""Lineage of a stage output, read back from the artifact store (``ref.json`` files), MLflow optional.

Every output folder's ``ref.json`` names its inputs (stage, key, uri, sha256), so the chain back to
the source data is a walk over ``ref.json`` files; MLflow is only consulted to turn a run id into an
output. :func:`resolve_record` accepts a digest or key prefix, an artifact folder, or an MLflow run id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddcore.data.storage import is_url
from ddcore.errors import DDFlowError
from tasks.runtime.mlflow_client import flatten
from tasks.runtime.refs import ArtifactRef, RefRecord, code_version_label
from tasks.runtime.store import REF_FILE, ArtifactStore
from tasks.runtime.tracking import Tracker

_HEX = re.compile(r"^[0-9a-f]{4,64}$")


class LineageError(DDFlowError):
    """The requested artifact cannot be found or is ambiguous."""


@dataclass
class LineageNode:
    """One artifact in a lineage tree.

    Attributes:
        ref: the artifact (as its consumer recorded it).
        record: its ``ref.json`` (``None`` when missing).
        input_name: the name under which the consumer received it (``None`` for the root).
        problem: why the record is missing or does not match the ref, if so.
        inputs: the artifacts it was computed from.
    """

    ref: ArtifactRef
    record: RefRecord | None
    input_name: str | None = None
    problem: str | None = None
    inputs: list[LineageNode] = field(default_factory=list)


def resolve_record(store: ArtifactStore, query: str, *, tracker: Tracker | None = None) -> RefRecord:
    """The ``ref.json`` named by ``query``: an artifact folder (or its ``ref.json``), a sha256 or stage-key
    prefix of an output under ``store``, or an MLflow run id (of a stage run).

    Raises:
        LineageError: nothing matches, or a prefix matches several outputs.
    """
    q = query.strip()
    if "/" in q or is_url(q) or Path(q).exists():
        folder = q[: -len(REF_FILE)].rstrip("/") if q.endswith(REF_FILE) else q.rstrip("/")
        if not is_url(folder):
            folder = str(Path(folder).expanduser().resolve())
        rec = store.read_record_at(folder)
        if rec is not None:
            return rec
        raise LineageError(f"{query} has no readable {REF_FILE}; pass a finished stage output folder")
    low = q.lower()
    if _HEX.match(low):
        matches: dict[tuple[str, str], RefRecord] = {}
        for rec in store.records():
            if rec.ref.sha256.startswith(low) or rec.ref.key.startswith(low):
                matches[(rec.ref.stage, rec.ref.key)] = rec
        if len(matches) == 1:
            return next(iter(matches.values()))
        if len(matches) > 1:
            names = ", ".join(f"{s}/{k}" for s, k in sorted(matches)[:4])
            raise LineageError(f"{query!r} matches {len(matches)} outputs ({names}); give more characters")
    if tracker is not None and tracker.enabled and re.match(r"^[0-9a-f]{32}$", low):
        tags = tracker.run_tags(low)
        if tags:
            uri, stage, key = tags.get("ddflow.output_uri"), tags.get("ddflow.stage"), tags.get("ddflow.stage_key")
            rec = store.read_record_at(uri) if uri else None
            if rec is None and stage and key:
                rec = store.read_record(stage, key)
            if rec is not None:
                return rec
            raise LineageError(f"MLflow run {query} has no readable output ({uri or 'no ddflow.output_uri tag'}); "
                               "it may be a pipeline (parent) run or its output was deleted")
    store.check_reachable()  # "no artifact matches" would hide an unreachable root
    where = "" if tracker is None or not tracker.enabled else " or in MLflow"
    raise LineageError(f"no artifact matches {query!r} under {store.root}{where}; pass a digest or key prefix, "
                       "an artifact folder or an MLflow run id")


def build_lineage(store: ArtifactStore, record: RefRecord, *, max_depth: int = 64) -> LineageNode:
    """The tree from ``record`` back to the stages without inputs (the source data)."""
    return _node(store, record.ref, record, None, None, max_depth)


def _node(store: ArtifactStore, ref: ArtifactRef, record: RefRecord | None, name: str | None,
          problem: str | None, depth: int) -> LineageNode:
    node = LineageNode(ref=ref, record=record, input_name=name, problem=problem)
    if record is None or depth <= 0:
        return node
    for in_name in sorted(record.inputs):
        up = record.inputs[in_name]
        rec = store.read_record_at(up.uri)
        if rec is None:
            rec = store.read_record(up.stage, up.key)
        issue = None
        if rec is None:
            issue = f"{REF_FILE} not found (output deleted or in another store)"
        elif rec.ref.sha256 != up.sha256:
            issue = f"rebuilt since: now sha256 {rec.ref.sha256[:16]}"
        node.inputs.append(_node(store, up, rec, in_name, issue, depth - 1))
    return node


def key_values(config: dict[str, Any], limit: int = 8) -> list[str]:
    """Up to ``limit`` ``key=value`` strings of a config (flattened), for display."""
    flat = flatten(config)
    out = [f"{k}={v if len(v) <= 60 else v[:57] + '...'}" for k, v in flat.items()]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def lineage_json(node: LineageNode) -> dict[str, Any]:
    """A JSON-serialisable form of the tree."""
    rec = node.record
    out: dict[str, Any] = {
        "input_name": node.input_name, "stage": node.ref.stage, "key": node.ref.key, "kind": node.ref.kind,
        "sha256": node.ref.sha256, "uri": node.ref.uri, "problem": node.problem,
    }
    if rec is not None:
        out.update(config_digest=rec.config_digest, config_class=rec.config_class, config=rec.config,
                   effective_config=rec.effective_config, code_version=rec.code_version, metrics=rec.metrics,
                   finished_at=rec.finished_at, duration_s=rec.duration_s)
    out["inputs"] = [lineage_json(child) for child in node.inputs]
    return out


def lineage_tree(node: LineageNode) -> Any:
    """A ``rich.tree.Tree`` of the lineage (stage, key, digest, config digest, code version, config values)."""
    from rich.tree import Tree

    tree = Tree(_label(node))
    _add_children(tree, node)
    return tree


def _add_children(tree: Any, node: LineageNode) -> None:
    for child in node.inputs:
        _add_children(tree.add(_label(child)), child)


def _label(node: LineageNode) -> str:
    from rich.markup import escape

    ref, rec = node.ref, node.record
    head = f"[dim]{escape(node.input_name)} <- [/]" if node.input_name else ""
    lines = [f"{head}[bold]{escape(ref.stage)}[/] [cyan]{ref.key}[/]  {ref.kind}  sha256 {ref.sha256[:16]}"]
    if rec is not None:
        lines.append(f"config {rec.config_digest[:12]}  code {escape(code_version_label(rec.code_version))}  "
                     f"finished {escape(rec.finished_at)}  [dim]{escape(ref.uri)}[/]")
        values = key_values(rec.config)
        if values:
            lines.append("[dim]" + escape("  ".join(values)) + "[/]")
        if not rec.inputs:
            lines.append("[green]source data[/] (no upstream stage)")
    if node.problem:
        lines.append(f"[yellow]! {escape(node.problem)}[/]")
    return "\n".join(lines)
