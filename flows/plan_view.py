"""``ddflow plan``: the state of every plan node in a store, without running anything.

Like ``terraform plan`` or ``dvc status``: walking the plan in order, a node is ``forced`` when ``--force``
names its stage or it consumes a forced node's output; ``cached`` when all its inputs are known and the
store holds a verified output under its stage key; ``to compute`` otherwise (its own output is missing, or
an input is still to be computed, so its key cannot be known yet). Verification is ``quick`` (sizes and
manifest digests), which is what a plan needs to be fast on a large store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ddcore.data import open_artifact
from flows.config import RunConfig
from flows.plan import INGEST, Plan, build_plan, expand_force
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.store import ArtifactStore

CACHED, TO_COMPUTE, FORCED = "cached", "to compute", "forced"


@dataclass(frozen=True)
class NodeState:
    """One node of ``ddflow plan``: id, stage, state and (when its inputs are known) stage key."""

    id: str
    stage: str
    state: str
    key: str | None
    inputs: tuple[str, ...]


def plan_for_store(cfg: RunConfig, store: ArtifactStore) -> Plan:
    """The plan of ``cfg``; class groups are resolved when the store already holds the ingested data."""
    head = build_plan(cfg, num_classes=None)
    ingest = head.node(INGEST)
    ref = store.lookup(INGEST, store.key_for(INGEST, ingest.config, {}), verify="quick")
    if ref is None:
        return head
    return build_plan(cfg, num_classes=open_artifact(ref.uri, verify="none").meta.num_classes)


def node_states(plan: Plan, store: ArtifactStore, force: list[str] | None = None) -> list[NodeState]:
    """The state of each node of ``plan`` in ``store`` (see the module doc), in plan order."""
    forced = set(expand_force(force))
    refs: dict[str, ArtifactRef | None] = {}
    states: dict[str, str] = {}
    out = []
    for node in plan.nodes:
        key = None
        if node.stage in forced or any(states.get(src) == FORCED for src in node.inputs.values()):
            state, ref = FORCED, None
        elif any(refs.get(src) is None for src in node.inputs.values()):
            state, ref = TO_COMPUTE, None
        else:
            inputs = {name: refs[src] for name, src in node.inputs.items()}
            key = store.key_for(node.stage, node.config, inputs)  # type: ignore[arg-type]
            ref = store.lookup(node.stage, key, verify="quick")
            state = CACHED if ref is not None else TO_COMPUTE
        refs[node.id], states[node.id] = ref, state
        out.append(NodeState(node.id, node.stage, state, key, tuple(node.inputs.values())))
    return out


def counts(states: list[NodeState]) -> dict[str, int]:
    return {s: sum(1 for n in states if n.state == s) for s in (CACHED, TO_COMPUTE, FORCED)}


def to_mermaid(states: list[NodeState]) -> str:
    """A Mermaid ``flowchart`` of the plan, nodes coloured by state (for docs and pull requests)."""
    ids = {n.id: f"n{i}" for i, n in enumerate(states)}
    lines = ["flowchart LR"]
    for n in states:
        lines.append(f'  {ids[n.id]}["{n.id}<br/><i>{n.state}</i>"]:::{n.state.replace(" ", "_")}')
    for n in states:
        lines += [f"  {ids[src]} --> {ids[n.id]}" for src in dict.fromkeys(n.inputs) if src in ids]
    lines += ["  classDef cached fill:#d9f2d9,stroke:#3c763d", "  classDef to_compute fill:#fff3cd,stroke:#8a6d3b",
              "  classDef forced fill:#f8d7da,stroke:#a94442"]
    return "\n".join(lines)


def to_json(plan: Plan, states: list[NodeState]) -> str:
    return json.dumps({"run": plan.name, "counts": counts(states),
                       "nodes": [{"id": n.id, "stage": n.stage, "state": n.state, "key": n.key,
                                  "inputs": list(n.inputs)} for n in states],
                       "rows": [r.model_dump(mode="json") for r in plan.rows]}, indent=2)
