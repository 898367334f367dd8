"""``data.source: {kind: artifact, path: ...}``: a run starts from a dataset artifact made by ``ddflow ingest`` without
re-ingesting it. The ingest stage publishes the same dataset (same manifest digest, same class names), its stage key
follows the artifact's content (a re-ingested artifact at the same path is a new ingest output), and ``ref.json``
names the source artifact and its digest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import class_images
from typer.testing import CliRunner

from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.data.sources.idx import FASHION_MNIST_CLASSES
from ddcore.errors import ArtifactError, ConfigError
from flows.cli import app

pytest_plugins = ["orchestration_fixtures"]
runner = CliRunner()


def _npz_artifact(tmp: Path, name: str = "art", n: int = 3) -> Path:
    x, y = class_images(n, 3, shape=(8, 8), seed=0)
    np.savez(tmp / "d.npz", x=x, y=y)
    ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": str(tmp / "d.npz"),
                                                 "classes": ["ant", "bee", "cat"]}}), tmp / name, overwrite=True)
    return tmp / name


def _reuse(path: Path, **extra: object) -> IngestConfig:
    return IngestConfig.from_mapping({"source": {"kind": "artifact", "path": str(path), **extra}})


def test_the_artifact_is_published_unchanged(tmp_path: Path) -> None:
    """kind artifact: the output is the same files (hard links on one filesystem), so the same digest and classes;
    nothing is decoded; ``max_per_class`` (which needs re-ingesting) is refused; a failure leaves nothing behind."""
    src = _npz_artifact(tmp_path)
    meta = ingest(_reuse(src), tmp_path / "out")
    assert meta.digest == open_artifact(src).digest == open_artifact(tmp_path / "out", verify="full").digest
    assert open_artifact(tmp_path / "out").meta.classes == ["ant", "bee", "cat"]
    files = sorted(p.name for p in src.iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == files
    assert all((src / f).read_bytes() == (tmp_path / "out" / f).read_bytes() for f in files)
    assert (src / "train-000000.tar").stat().st_nlink == 2
    with pytest.raises(ArtifactError, match="artifact already exists"):
        ingest(_reuse(src), tmp_path / "out")
    with pytest.raises(ConfigError, match="max_per_class needs re-ingesting"):
        IngestConfig.from_mapping({"source": {"kind": "artifact", "path": str(src)}, "max_per_class": 1})
    (src / "train-000000.tar").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"is damaged \(shard train-000000.tar is truncated"):
        ingest(_reuse(src), tmp_path / "out2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out2")] and not (tmp_path / "out2").exists()


def test_the_ingest_node_is_keyed_on_the_artifact_digest(tmp_path: Path) -> None:
    """The plan pins the artifact's digest into the ingest node's config: the same content keeps the stage key, a
    re-ingested artifact at the same path changes it, an explicit ``sha256`` is the same key as the pinned one, and
    an unreadable path stays unpinned (the stage then reports why)."""
    from flows.config import RunConfig
    from flows.plan import INGEST, build_plan
    from tasks.runtime.store import stage_key

    def key(source: dict) -> tuple[str, str | None]:
        cfg = RunConfig.from_mapping({"data": {"source": source}, "methods": {"random": {}}})
        node = build_plan(cfg, num_classes=None).node(INGEST)
        return stage_key(INGEST, node.config), node.config.source.sha256  # type: ignore[attr-defined]

    src = _npz_artifact(tmp_path)
    first, pinned = key({"kind": "artifact", "path": str(src)})
    assert pinned == open_artifact(src).digest and key({"kind": "artifact", "path": str(src)})[0] == first
    assert key({"kind": "artifact", "path": str(src), "sha256": pinned})[0] == first
    _npz_artifact(tmp_path, n=4)  # re-ingested, other content, same path
    second, repinned = key({"kind": "artifact", "path": str(src)})
    assert second != first and repinned == open_artifact(src).digest != pinned
    assert key({"kind": "artifact", "path": str(tmp_path / "nope")})[1] is None


def _config(path: Path, artifact: Path) -> Path:
    path.write_text(f"""
name: reuse
ipcs: [2]
data: {{source: {{kind: artifact, path: {artifact}}}}}
methods: {{random: {{width: 8}}}}
random_baseline: false
evaluation: {{epochs: 1, width: 8, num_eval: 1}}
tracking: {{enabled: false}}
""")
    return path


def test_a_run_starts_from_an_ingested_artifact(fake_fmnist: Path, tmp_path: Path, prefect_harness: None) -> None:
    """``ddflow ingest`` once, then a run with ``kind: artifact``: the ingest stage's dataset digest is the artifact's,
    the Fashion-MNIST class names reach the distilled set, ref.json and the lineage name the source artifact and its
    digest, and a second run is all cached (a re-ingested artifact changes the ingest key: the test above)."""
    from flows.distill import distill_flow
    from tasks.runtime.lineage import build_lineage, lineage_json, resolve_record
    from tasks.runtime.store import ArtifactStore

    art = tmp_path / "fmnist-artifact"
    done = runner.invoke(app, ["ingest", str(fake_fmnist), "--out", str(art), "--shard-size", "50"])
    assert done.exit_code == 0, done.output
    digest = open_artifact(art, verify="full").digest
    cfg, root = _config(tmp_path / "c.yaml", art), tmp_path / "root"
    summary = distill_flow(str(cfg), [], str(root))
    assert summary["dataset"]["digest"] == digest
    data = open_artifact(summary["dataset"]["uri"], verify="full")
    assert data.digest == digest and data.meta.classes == FASHION_MNIST_CLASSES
    (row,) = summary["results"]
    assert open_artifact(row["artifact"]).meta.classes == FASHION_MNIST_CLASSES

    record = json.loads((Path(summary["dataset"]["uri"]) / "ref.json").read_text())
    assert record["ref"]["sha256"] == digest and record["config"]["source"] == {
        "kind": "artifact", "path": str(art), "sha256": digest, "verify": "quick"}
    assert record["metrics"]["source_artifact"] == str(art.resolve())
    assert record["metrics"]["source_digest"] == digest
    store = ArtifactStore(str(root))
    tree = lineage_json(build_lineage(store, resolve_record(store, row["digest"])))
    (source,) = [node for node in tree["inputs"] if node["stage"] == "ingest"]
    assert source["sha256"] == digest and source["config"]["source"]["path"] == str(art)

    again = distill_flow(str(cfg), [], str(root))
    assert all(s["cached"] for s in again["stages"]) and again["results"] == summary["results"]
