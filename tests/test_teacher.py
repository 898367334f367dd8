"""The soft-label teacher: trained on the real train split, saved and loaded as a folder, and run as the
``train_teacher`` stage through ``run_stage`` with a real ArtifactStore (a slow test runs it as a Prefect
task in a flow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import class_images
from orchestration_fixtures import REPO  # noqa: F401 - sets PREFECT_HOME before tasks.* import prefect

from ddcore.data.ingestion import IngestConfig
from ddcore.errors import ConfigError, DDFlowError
from ddcore.evaluate import teacher as teacher_mod
from ddcore.evaluate.teacher import (
    TEACHER_FILE,
    TeacherConfig,
    TeacherError,
    load_teacher,
    read_teacher_info,
    save_teacher,
    train_teacher,
)
from ddcore.evaluate.train import train_and_evaluate
from ddcore.sampling import TensorSampler
from tasks.ingest import ingest_stage
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, run_stage
from tasks.runtime.store import ArtifactStore
from tasks.teacher import TEACHER_KIND, TEACHER_STAGE, TRAIN_TEACHER, teacher_stage

pytest_plugins = ["orchestration_fixtures"]  # the slow test uses its prefect_harness

TINY = {"width": 8, "epochs": 4, "batch_size": 32, "lr": 0.05, "dsa": False, "seed": 3}


def _tensors(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated 10-class 1x16x16 images (class = row of a bright band), normalised to ~N(0, 1)."""
    x, y = class_images(n_per_class, 10, shape=(16, 16), seed=seed)
    xt = (torch.from_numpy(x).to(torch.float32).unsqueeze(1) / 255.0 - 0.3) / 0.3
    return xt, torch.from_numpy(y).to(torch.int64)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, dict[str, Any], TeacherConfig, torch.Tensor]:
    """A tiny teacher trained through a TensorSampler, its metrics, config and test images."""
    train_x, train_y = _tensors(10, seed=1)
    test_x, test_y = _tensors(4, seed=2)
    cfg = TeacherConfig(**TINY)
    net, metrics = train_teacher(TensorSampler(train_x, train_y, 10, (0.3,), (0.3,)), test_x, test_y, config=cfg)
    return net, metrics, cfg, test_x


def test_teacher_trained_for_a_few_epochs_beats_chance_on_its_test_split(trained: Any) -> None:
    """A few epochs on tiny generated data give test accuracy (a fraction) well above chance (0.1); the net
    comes back in eval mode without gradients and the metrics record the seed."""
    net, metrics, cfg, _ = trained
    assert 0.3 < metrics["test_acc"] <= 1.0
    assert metrics["num_train"] == 100 and metrics["num_classes"] == 10 and metrics["seed"] == cfg.seed
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_teacher_training_is_the_evaluator_loop_and_is_seeded() -> None:
    """train_teacher reuses train_and_evaluate's loop: same recipe and seed give the same test accuracy and
    per-pass losses, and a second training gives bit-identical weights (every draw from cfg.seed)."""
    train_x, train_y = _tensors(4, seed=5)
    test_x, test_y = _tensors(2, seed=6)
    cfg = TeacherConfig(**{**TINY, "epochs": 2, "dsa": True})
    a, ma = train_teacher((train_x, train_y), test_x, test_y, config=cfg, num_classes=10)
    b, _ = train_teacher((train_x, train_y), test_x, test_y, config=cfg, num_classes=10)
    run = train_and_evaluate(train_x, train_y, test_x, test_y, config=cfg.to_eval_config(), seed=cfg.seed,
                             num_classes=10)
    assert ma["test_acc"] == run.acc and ma["train_loss"] == run.losses[-1] and len(run.losses) == cfg.epochs
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(DDFlowError, match="num_classes"):
        train_teacher((train_x, train_y), test_x, test_y, config=cfg)


def test_teacher_config_rejects_unknown_network_and_bad_strategy_in_one_line() -> None:
    """TeacherConfig validates the network name and the DSA strategy (ConfigError naming the key)."""
    assert TeacherConfig().network == "convnet" and TeacherConfig().depth is None
    with pytest.raises(ConfigError, match="network.*unknown network 'convnot'"):
        TeacherConfig.from_mapping({"network": "convnot"}, where="teacher")
    with pytest.raises(ConfigError, match="teacher"):
        TeacherConfig.from_mapping({"dsa_strategy": "not_a_family"}, where="teacher")
    with pytest.raises(ConfigError, match="unknown key 'lr_sched'"):
        TeacherConfig.from_mapping({"lr_sched": "cosine"}, where="teacher")


@pytest.mark.parametrize("backend", ["safetensors", "torch"])
def test_save_then_load_gives_identical_logits(trained: Any, backend: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """save_teacher -> load_teacher rebuilds the network from teacher.json with identical logits, with
    safetensors and with the torch.save fallback; the JSON records config, shape, classes, accuracy, seed."""
    net, metrics, cfg, test_x = trained
    if backend == "torch":
        monkeypatch.setattr(teacher_mod, "_safetensors", lambda: None)
    out = str(tmp_path / "teacher")
    save_teacher(net, cfg, out, num_classes=10, image_shape=(1, 16, 16), test_acc=metrics["test_acc"])
    info = read_teacher_info(out)
    assert info["weights_file"] == ("weights.safetensors" if backend == "safetensors" else "weights.pt")
    assert info["config"] == cfg.model_dump(mode="json") and info["seed"] == cfg.seed
    assert info["num_classes"] == 10 and info["image_shape"] == [1, 16, 16]
    assert info["test_acc"] == metrics["test_acc"]
    loaded = load_teacher(out, "cpu", num_classes=10, image_shape=(1, 16, 16))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(test_x), net(test_x))


def _break(folder: Path, how: str) -> None:
    if how == "missing":
        return
    weights = folder / "weights.safetensors"
    if how == "no-json":
        (folder / TEACHER_FILE).unlink()
    elif how == "no-weights":
        weights.unlink()
    elif how == "weights-altered":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "json-garbage":
        (folder / TEACHER_FILE).write_text('{"format": "ddflow-teach')
    elif how == "json-wrong-config":
        doc = json.loads((folder / TEACHER_FILE).read_text())
        doc["config"]["width"] = 16  # a network whose shapes no longer fit the weights
        (folder / TEACHER_FILE).write_text(json.dumps(doc))
    elif how == "json-escaping-path":
        doc = json.loads((folder / TEACHER_FILE).read_text())
        doc["weights_file"] = "../elsewhere/weights.safetensors"  # never read outside the folder
        (folder / TEACHER_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize(("how", "match"), [
    ("missing", "does not exist"), ("no-json", "no teacher.json"), ("no-weights", "no weights.safetensors"),
    ("weights-altered", "truncated or altered"), ("json-garbage", "corrupt"),
    ("json-escaping-path", "corrupt"), ("json-wrong-config", "cannot be rebuilt"),
    ("wrong-classes", "has 10 classes but the data has 100"),
])
def test_missing_or_corrupt_teacher_folder_gives_one_clear_error(trained: Any, tmp_path: Path, how: str,
                                                                 match: str) -> None:
    """A missing, incomplete, altered or mismatched teacher folder raises one single-line TeacherError (a
    DDFlowError) that names the folder and the fix."""
    net, _, cfg, _ = trained
    folder = tmp_path / "teacher"
    if how != "missing":
        save_teacher(net, cfg, str(folder), num_classes=10, image_shape=(1, 16, 16))
    _break(folder, how)
    with pytest.raises(TeacherError, match=match) as info:
        load_teacher(str(folder), "cpu", num_classes=100 if how == "wrong-classes" else None)
    msg = str(info.value)
    assert isinstance(info.value, DDFlowError) and "\n" not in msg and str(folder) in msg
    assert "train_teacher" in msg or "train a teacher" in msg


# -- the stage --------------------------------------------------------------------------------
def _ingest(store: ArtifactStore, source: Path) -> ArtifactRef:
    cfg = IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(source)}, "shard_size": 64})
    return run_stage(store, "ingest", ingest_stage, {}, cfg, "dataset", device="cpu")


def test_stage_publishes_a_verified_teacher_and_a_second_call_is_cached(fake_fmnist: Path, tmp_path: Path) -> None:
    """train_teacher run through run_stage with a real ArtifactStore publishes a 'teacher' artifact that
    verifies (full tree digest), records test accuracy, loads with the dataset's shape and serves as the
    evaluator's online teacher, and a second call
    with the same config and dataset returns the same ref without running the stage again."""
    store = ArtifactStore(tmp_path / "store")
    data = _ingest(store, fake_fmnist)
    calls: list[str] = []

    def counted(inputs: dict[str, ArtifactRef], config: TeacherConfig, out: str, ctx: StageContext) -> dict:
        calls.append(ctx.key)
        return teacher_stage(inputs, config, out, ctx)

    cfg = TeacherConfig(**{**TINY, "epochs": 2})
    ref = run_stage(store, TEACHER_STAGE, counted, {"dataset": data}, cfg, TEACHER_KIND, device="cpu")
    assert ref.kind == "teacher" and ref.stage == "train_teacher" and len(calls) == 1
    assert store.lookup(TEACHER_STAGE, ref.key, verify="full") == ref
    rec = store.read_record(TEACHER_STAGE, ref.key)
    assert rec is not None and rec.inputs == {"dataset": data} and 0.0 <= rec.metrics["test_acc"] <= 1.0
    assert rec.metrics["test_split"] == "test" and rec.metrics["num_train"] == 120
    info = read_teacher_info(ref.uri)
    assert info["dataset_digest"] == data.sha256 and info["image_shape"] == [1, 28, 28]
    net = load_teacher(ref.uri, "cpu", num_classes=10, image_shape=(1, 28, 28))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    x = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 10
    student = train_and_evaluate(x, y, x, y, config=TeacherConfig(**{**TINY, "epochs": 1}).to_eval_config(),
                                 seed=0, num_classes=10, teacher=net)  # the loaded teacher plugs into the evaluator
    assert len(student.losses) == 1 and student.losses[0] >= 0.0
    again = run_stage(store, TEACHER_STAGE, counted, {"dataset": data}, cfg, TEACHER_KIND, device="cpu")
    assert again == ref and len(calls) == 1
    assert TRAIN_TEACHER.name == "train_teacher"


@pytest.mark.slow
def test_stage_as_prefect_task_is_cached_on_the_second_flow_run(fake_fmnist: Path, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    """Through Prefect (PipelineRun in a flow): ingest -> train_teacher completes, then a re-run of the flow
    shows both stages Cached with the same refs."""
    request.getfixturevalue("prefect_harness")
    from prefect import flow

    from flows.orchestration import PipelineRun
    from tasks.ingest import INGEST

    @flow(name="teacher-test")
    def teacher_flow(root: str) -> dict[str, Any]:
        store = ArtifactStore(root)
        with PipelineRun(store, run_name="teacher", stages=("ingest", "train_teacher")) as run:
            icfg = IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(fake_fmnist)},
                                              "shard_size": 64})
            data = run.run(INGEST, icfg, device="cpu")
            run.run(TRAIN_TEACHER, TeacherConfig(**{**TINY, "epochs": 1}), {"dataset": data}, device="cpu")
        return {"outcomes": dict(run.outcomes), "refs": dict(run.refs)}

    first = teacher_flow(str(tmp_path / "store"))
    assert first["outcomes"] == {"ingest": "completed", "train_teacher": "completed"}
    second = teacher_flow(str(tmp_path / "store"))
    assert second["outcomes"] == {"ingest": "cached", "train_teacher": "cached"}
    assert second["refs"] == first["refs"] and second["refs"]["train_teacher"].kind == "teacher"

