"""Lineage from the artifact store alone: resolve by digest/key prefix or path, tree, JSON, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import ToyConfig, double_numbers, free_port, make_numbers, total_numbers  # noqa: E402

from flows.cli import app  # noqa: E402
from tasks.runtime.lineage import LineageError, build_lineage, lineage_json, lineage_tree, resolve_record  # noqa: E402
from tasks.runtime.refs import ArtifactRef  # noqa: E402
from tasks.runtime.stage import run_stage  # noqa: E402
from tasks.runtime.store import ArtifactStore  # noqa: E402


@pytest.fixture
def chain(tmp_path: Path, toy_env: Path) -> tuple[ArtifactStore, list[ArtifactRef]]:
    """make(value=3) -> double -> total in a fresh store."""
    store = ArtifactStore(tmp_path / "store")
    a = run_stage(store, "make", make_numbers, {}, ToyConfig(value=3), "features", device="cpu")
    b = run_stage(store, "double", double_numbers, {"numbers": a}, ToyConfig(value=2), "features", device="cpu")
    c = run_stage(store, "total", total_numbers, {"numbers": b}, ToyConfig(), "report", device="cpu")
    return store, [a, b, c]


def test_resolve_by_digest_key_and_path(chain: tuple[ArtifactStore, list[ArtifactRef]]) -> None:
    """A sha256 prefix, a stage-key prefix, the folder and its ref.json all name the same output."""
    store, (_, _, c) = chain
    for query in (c.sha256[:10], c.key[:8], c.uri, f"{c.uri}/ref.json", c.sha256.upper()[:12]):
        assert resolve_record(store, query).ref == c
    with pytest.raises(LineageError, match="no artifact matches 'ffffffffff'"):
        resolve_record(store, "ffffffffff")


def test_ambiguous_prefix_is_refused(tmp_path: Path, toy_env: Path) -> None:
    """A digest prefix matching two outputs (same content from two stages) is an error asking for more."""
    store = ArtifactStore(tmp_path)
    a = run_stage(store, "make", make_numbers, {}, ToyConfig(value=3), "features", device="cpu")
    b = run_stage(store, "make-again", make_numbers, {}, ToyConfig(value=3), "features", device="cpu")
    assert a.sha256 == b.sha256 and a.key != b.key
    with pytest.raises(LineageError, match="matches 2 outputs"):
        resolve_record(store, a.sha256[:12])
    assert resolve_record(store, b.key).ref == b


def test_tree_walks_back_to_source(chain: tuple[ArtifactStore, list[ArtifactRef]]) -> None:
    """The tree of the last stage lists every stage back to the one without inputs, with keys, digests,
    config digests, code version and config values; JSON has the same chain."""
    from rich.console import Console

    store, (a, b, c) = chain
    node = build_lineage(store, resolve_record(store, c.key))
    console = Console(width=200, record=True)
    console.print(lineage_tree(node))
    text = console.export_text()
    order = [text.index(s) for s in ("total", "numbers <- double", "numbers <- make", "source data")]
    assert order == sorted(order)
    for ref in (a, b, c):
        assert ref.key in text and ref.sha256[:16] in text
    assert ToyConfig(value=3).digest()[:12] in text and "value=3" in text
    data = lineage_json(node)
    assert [data["stage"], data["inputs"][0]["stage"], data["inputs"][0]["inputs"][0]["stage"]] == [
        "total", "double", "make"]
    assert data["inputs"][0]["inputs"][0]["config"] == {"value": 3, "sleep_s": 0.0}
    assert data["inputs"][0]["inputs"][0]["inputs"] == []


def test_rebuilt_or_missing_upstream_is_flagged(chain: tuple[ArtifactStore, list[ArtifactRef]]) -> None:
    """An upstream output deleted since is shown with a problem note instead of failing."""
    import shutil

    store, (a, _, c) = chain
    shutil.rmtree(a.uri)
    node = build_lineage(store, resolve_record(store, c.uri))
    assert node.inputs[0].inputs[0].problem.startswith("ref.json not found")


def test_cli_lineage_from_store_without_mlflow(chain: tuple[ArtifactStore, list[ArtifactRef]]) -> None:
    """`ddflow lineage` prints the chain from the store alone, even with an unreachable MLflow URI;
    --json gives machine-readable output; an unknown ref is one error line with exit code 2."""
    store, (a, b, c) = chain
    runner = CliRunner()
    dead = f"http://127.0.0.1:{free_port()}"
    res = runner.invoke(app, ["lineage", c.sha256[:12], "--root", store.root, "--tracking-uri", dead])
    assert res.exit_code == 0, res.output
    assert all(s in res.output for s in ("total", "double", "make", "source data"))
    res = runner.invoke(app, ["lineage", b.uri, "--root", store.root, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["sha256"] == b.sha256 and data["inputs"][0]["key"] == a.key
    res = runner.invoke(app, ["lineage", "abcdef012345", "--root", store.root])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no artifact matches" in res.output
