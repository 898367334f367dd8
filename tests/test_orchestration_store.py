"""The artifact store and run_stage without Prefect: keys, ref.json, verification, rebuilds, memory://."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddcore.errors import ArtifactError
from tasks.runtime.refs import ArtifactRef, RefRecord
from tasks.runtime.stage import StageError, run_stage
from tasks.runtime.stage_errors import is_transient
from tasks.runtime.store import ArtifactStore

pytest_plugins = ["orchestration_fixtures"]

from orchestration_fixtures import (  # noqa: E402
    FAIL_ENV,
    ToyConfig,
    double_numbers,
    executions,
    make_numbers,
    total_numbers,
)


def chain(store: ArtifactStore, value: int = 3) -> tuple[ArtifactRef, ArtifactRef, ArtifactRef]:
    """make -> double -> total through run_stage only."""
    a = run_stage(store, "make", make_numbers, {}, ToyConfig(value=value), "features", device="cpu")
    b = run_stage(store, "double", double_numbers, {"numbers": a}, ToyConfig(value=2), "features", device="cpu")
    c = run_stage(store, "total", total_numbers, {"numbers": b}, ToyConfig(), "report", device="cpu")
    return a, b, c


def test_ref_json_round_trip_and_hash() -> None:
    """An ArtifactRef survives JSON unchanged, is hashable, and equal refs hash equal (stable for Prefect)."""
    from prefect.utilities.hashing import hash_objects

    ref = ArtifactRef(uri="/x/make/abc", sha256="a" * 64, stage="make", key="0123456789abcdef0123", kind="features")
    again = ArtifactRef.from_json(ref.to_json())
    assert again == ref and hash(again) == hash(ref)
    assert {ref: 1}[again] == 1
    assert hash_objects(ref) == hash_objects(again) is not None
    assert ref.to_json() == again.to_json()
    with pytest.raises(ValueError):
        ArtifactRef(uri="/x", sha256="nothex", stage="make", key="0123456789", kind="features")


def test_key_depends_on_stage_config_and_upstream_content(tmp_path: Path) -> None:
    """The stage key changes with stage name, config and upstream digest, and not with anything else."""
    store = ArtifactStore(tmp_path)
    up = ArtifactRef(uri="/a", sha256="1" * 64, stage="make", key="0" * 20, kind="features")
    moved = up.model_copy(update={"uri": "/elsewhere"})
    other = up.model_copy(update={"sha256": "2" * 64})
    k = store.key_for("double", ToyConfig(value=2), [up])
    assert k == store.key_for("double", ToyConfig(value=2), [up])
    assert k == store.key_for("double", ToyConfig(value=2), [moved])
    assert len(k) == 20
    assert k != store.key_for("double", ToyConfig(value=3), [up])
    assert k != store.key_for("triple", ToyConfig(value=2), [up])
    assert k != store.key_for("double", ToyConfig(value=2), [other])
    assert store.key_for("x", ToyConfig(), {"a": up}) != store.key_for("x", ToyConfig(), {"b": up})
    with pytest.raises(ArtifactError, match="reserved"):
        store.key_for("_locks", ToyConfig(), [])


def test_run_stage_computes_once_and_writes_lineage(tmp_path: Path, toy_env: Path) -> None:
    """First call computes and publishes <root>/<stage>/<key>/ with a complete ref.json; a second call
    is answered from the store without running the stage function."""
    store = ArtifactStore(tmp_path / "store")
    a, b, c = chain(store)
    assert [executions(toy_env, s) for s in ("make", "double", "total")] == [1, 1, 1]
    assert chain(store) == (a, b, c)
    assert [executions(toy_env, s) for s in ("make", "double", "total")] == [1, 1, 1]
    folder = Path(b.uri)
    assert folder == tmp_path / "store" / "double" / b.key
    rec = RefRecord.from_json((folder / "ref.json").read_text())
    assert rec.ref == b and rec.inputs == {"numbers": a}
    assert rec.config == {"value": 2, "sleep_s": 0.0} and rec.config_digest == ToyConfig(value=2).digest()
    assert rec.code_version["ddflow"] and "git" in rec.code_version
    assert rec.metrics == {"n": 3, "device": "cpu"} and rec.files == {"numbers.json": 9}
    assert rec.digest_method == "tree" and rec.started_at and rec.finished_at
    assert json.loads((folder / "numbers.json").read_text()) == [0, 2, 4]
    assert not (tmp_path / "store" / "_checkpoints" / "double" / b.key).exists()
    assert [p.name for p in (tmp_path / "store" / "double").iterdir()] == [b.key]


@pytest.mark.parametrize("damage", ["truncate", "same_size", "no_ref", "bad_ref", "extra_file"])
def test_damaged_output_is_rebuilt(tmp_path: Path, toy_env: Path, damage: str) -> None:
    """A truncated, altered, unmarked or polluted output folder fails lookup and is rebuilt, never read."""
    store = ArtifactStore(tmp_path)
    a, b, _ = chain(store)
    data, ref_json = Path(b.uri) / "numbers.json", Path(b.uri) / "ref.json"
    if damage == "truncate":
        data.write_text("[0,")
    elif damage == "same_size":
        data.write_text(data.read_text().replace("4", "5"))
    elif damage == "no_ref":
        ref_json.unlink()
    elif damage == "bad_ref":
        ref_json.write_text(ref_json.read_text()[:40])
    else:
        (Path(b.uri) / "stray.bin").write_bytes(b"x")
    assert store.lookup("double", b.key) is None
    again = run_stage(store, "double", double_numbers, {"numbers": a}, ToyConfig(value=2), "features", device="cpu")
    assert again == b and executions(toy_env, "double") == 2
    assert json.loads(data.read_text()) == [0, 2, 4] and store.lookup("double", b.key) == b


def test_abandoned_temp_folder_is_ignored_and_cleaned(tmp_path: Path, toy_env: Path) -> None:
    """A temporary folder left by a killed writer is never listed as an output and is removed on rebuild."""
    store = ArtifactStore(tmp_path)
    a = run_stage(store, "make", make_numbers, {}, ToyConfig(value=2), "features", device="cpu")
    key = store.key_for("double", ToyConfig(value=2), {"numbers": a})
    stale = tmp_path / "double" / f".{key}.tmp-999999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "numbers.json").write_text("[0, 2]")
    assert store.lookup("double", key) is None and list(store.records()) == [store.read_record("make", a.key)]
    run_stage(store, "double", double_numbers, {"numbers": a}, ToyConfig(value=2), "features", device="cpu")
    assert sorted(p.name for p in (tmp_path / "double").iterdir()) == [key]


def test_failure_keeps_checkpoint_and_leaves_no_output(tmp_path: Path, toy_env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing stage raises StageError naming the stage, publishes nothing, and keeps its checkpoint
    folder so the next attempt can resume; success removes the checkpoint."""
    store = ArtifactStore(tmp_path)
    seen: list[bool] = []

    def resumable(inputs, config, out, ctx):  # noqa: ANN001, ANN202
        marker = Path(ctx.checkpoint_dir) / "progress"
        seen.append(marker.exists())
        marker.write_text("half")
        if os.environ.get(FAIL_ENV):
            raise ValueError("boom")
        Path(out, "done.txt").write_text("ok")
        return {"resumed": int(seen[-1])}

    monkeypatch.setenv(FAIL_ENV, "1")
    with pytest.raises(StageError, match=r"stage 'resume' failed: ValueError: boom") as err:
        run_stage(store, "resume", resumable, {}, ToyConfig(), "other", device="cpu")
    assert isinstance(err.value.cause, ValueError) and not err.value.transient
    key = store.key_for("resume", ToyConfig(), [])
    assert not (tmp_path / "resume" / key).exists() and list((tmp_path / "resume").iterdir()) == []
    assert (tmp_path / "_checkpoints" / "resume" / key / "progress").exists()
    monkeypatch.delenv(FAIL_ENV)
    ref = run_stage(store, "resume", resumable, {}, ToyConfig(), "other", device="cpu")
    assert seen == [False, True] and store.read_record("resume", key).metrics == {"resumed": 1}
    assert not (tmp_path / "_checkpoints" / "resume" / key).exists() and ref.key == key


def test_out_of_memory_hook_retries_with_smaller_config(tmp_path: Path) -> None:
    """A CUDA OOM goes to the on_oom hook, which may hand back a smaller config; ref.json records the
    config actually run, while the key stays that of the requested config. No hook: the error is final."""
    store = ArtifactStore(tmp_path)

    def hungry(inputs, config, out, ctx):  # noqa: ANN001, ANN202
        if config.value > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        Path(out, "ok").write_text(str(config.value))
        return {"attempt": ctx.attempt}

    halve = lambda cfg, attempt: cfg.model_copy(update={"value": cfg.value // 2})  # noqa: E731
    ref = run_stage(store, "hungry", hungry, {}, ToyConfig(value=8), "other", device="cpu", on_oom=halve)
    rec = store.read_record("hungry", ref.key)
    assert ref.key == store.key_for("hungry", ToyConfig(value=8), [])
    assert rec.effective_config == {"value": 2, "sleep_s": 0.0} and rec.metrics == {"attempt": 2}
    with pytest.raises(StageError, match="CUDA out of memory") as err:
        run_stage(store, "hungry", hungry, {}, ToyConfig(value=9), "other", device="cpu")
    assert not err.value.transient


def test_transient_classification() -> None:
    """Only connection/timeout/I-O errors are retried; missing files, config and code errors are not."""
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError(5, "EIO"))
    assert not is_transient(FileNotFoundError()) and not is_transient(PermissionError())
    assert not is_transient(ValueError()) and not is_transient(ArtifactError("x"))
    assert is_transient(StageError.wrap("s", "k", ConnectionError("down")))


def test_dataset_stage_uses_dataset_digest(tmp_path: Path) -> None:
    """A dataset output's sha256 is its dataset.json digest; lookup opens it with quick verification, so
    a truncated shard is caught; a 'dataset' stage that writes no dataset.json fails."""
    from ddcore.data.writer import ArtifactWriter

    def write_ds(inputs, config, out, ctx):  # noqa: ANN001, ANN202
        with ArtifactWriter(out, name="tiny", classes=["a", "b"], image_shape=(1, 4, 4), source={"kind": "test"},
                            overwrite=True) as w:
            for i in range(4):
                w.add("train", f"s{i}", np.full((4, 4, 1), 40 * i, np.uint8), i % 2)
            meta = w.commit()
        return {"count": meta.counts["train"]["total"]}

    store = ArtifactStore(tmp_path)
    ref = run_stage(store, "ingest", write_ds, {}, ToyConfig(), "dataset", device="cpu")
    meta = json.loads((Path(ref.uri) / "dataset.json").read_text())
    assert ref.sha256 == meta["digest"] and store.read_record("ingest", ref.key).digest_method == "dataset"
    assert store.lookup("ingest", ref.key) == ref
    shard = next(Path(ref.uri).glob("train-*.tar"))
    shard.write_bytes(shard.read_bytes()[:-512])
    assert store.lookup("ingest", ref.key) is None
    with pytest.raises(StageError, match="wrote no dataset.json"):
        run_stage(store, "fake", lambda i, c, o, x: {}, {}, ToyConfig(), "dataset", device="cpu")


def test_memory_store_through_the_same_code(toy_env: Path) -> None:
    """memory:// roots work through the same store code: chain, cache hit, damage detection, rebuild, scan."""
    import fsspec

    root = "memory://ddflow-test-store"
    store = ArtifactStore(root)
    try:
        a, b, c = chain(store)
        assert b.uri == f"{root}/double/{b.key}" and chain(store) == (a, b, c)
        assert [executions(toy_env, s) for s in ("make", "double", "total")] == [1, 1, 1]
        fs = fsspec.filesystem("memory")
        with fs.open(f"/ddflow-test-store/double/{b.key}/numbers.json", "wb") as f:
            f.write(b"[0,")
        assert store.lookup("double", b.key) is None
        assert chain(store) == (a, b, c) and executions(toy_env, "double") == 2
        assert sorted(r.ref.stage for r in store.records()) == ["double", "make", "total"]
        with store.lock("make", a.key):
            pass
    finally:
        fsspec.filesystem("memory").rm("/ddflow-test-store", recursive=True)


def test_checkpoints_of_a_remote_root_live_under_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote root's checkpoint folder is a URL under the root: state saved there is read back from the store
    (what another node sees), nothing lands in a local scratch or a relative 'memory:/...' folder in the cwd."""
    import fsspec

    from ddcore.checkpoint import load_state, loop_checkpoint, save_state

    monkeypatch.chdir(tmp_path)
    store = ArtifactStore("memory://ck-root")
    try:
        ck = store.checkpoint_dir("distill", "a" * 20)
        assert ck == "memory://ck-root/_checkpoints/distill/" + "a" * 20
        save_state(loop_checkpoint(ck), {"iteration": 4, "images": torch.ones(2, 3)})
        assert fsspec.filesystem("memory").exists(f"/ck-root/_checkpoints/distill/{'a' * 20}/loop.pt")
        back = load_state(loop_checkpoint(ck))
        assert back is not None and back["iteration"] == 4 and torch.equal(back["images"], torch.ones(2, 3))
        assert load_state(loop_checkpoint(store.checkpoint_dir("distill", "b" * 20))) is None
        store.clear_checkpoint("distill", "a" * 20)
        assert load_state(loop_checkpoint(ck)) is None
        assert list(tmp_path.iterdir()) == []
    finally:
        if fsspec.filesystem("memory").exists("/ck-root"):
            fsspec.filesystem("memory").rm("/ck-root", recursive=True)
