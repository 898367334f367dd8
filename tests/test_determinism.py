"""Determinism on CPU: the same config and seeds give byte-identical synthetic-set artifacts (every shard,
the manifest, dataset.json, the digest) across two runs and across a run that failed mid-distillation and
was resumed from its checkpoint; a second store gives the same shards, manifest and digest. Runs the real
``ingest`` and ``distill`` stage functions through ``run_stage`` (no Prefect server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import class_images, write_idx
from orchestration_fixtures import REPO  # noqa: F401 - sets PREFECT_HOME before tasks.* import prefect

from ddcore.data.ingestion import IngestConfig
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.threads import torch_threads
from tasks.distill import distill_stage
from tasks.ingest import ingest_stage
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageError, run_stage
from tasks.runtime.store import REF_FILE, ArtifactStore

LOOP = {"iterations": 6, "width": 8, "batch_real": 6, "checkpoint_every": 1, "log_every": 1}
CONFIGS: dict[str, dict[str, Any]] = {
    "dm": {"method": "dm", **LOOP},
    "hdd": {"method": "hdd", "lr_img": 0.1, **LOOP},
    "ncfm": {"method": "ncfm", "lr_img": 1e-3, "init": "mix",
             "ncfm": {"num_freqs": 64, "sampling_net": True, "pool": {"num_models": 1, "epochs": 1}}, **LOOP},
    "herding": {"method": "herding", "width": 8},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-format folder, 8 train / 1 test images per class."""
    root = tmp_path_factory.mktemp("det-fmnist")
    for prefix, n, seed in (("train", 8, 1), ("t10k", 1, 2)):
        x, y = class_images(n, 10, shape=(28, 28), seed=seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


def _config(method: str) -> DistillConfig | BaselineConfig:
    data = {"ipc": 2, "seed": 11, **CONFIGS[method]}
    return BaselineConfig.model_validate(data) if method == "herding" else DistillConfig.model_validate(data)


def _ingest(store: ArtifactStore, source: Path) -> ArtifactRef:
    cfg = IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(source)}, "shard_size": 16})
    return run_stage(store, "ingest", ingest_stage, {}, cfg, "dataset", device="cpu")


def _distill(store: ArtifactStore, data: ArtifactRef, method: str, *, force: bool = False) -> ArtifactRef:
    return run_stage(store, "distill", distill_stage, {"dataset": data}, _config(method), "synthetic", force=force,
                     device="cpu")


def _files(ref: ArtifactRef) -> dict[str, bytes]:
    """Every file of an output folder except ref.json (which records times), as bytes."""
    root = Path(ref.uri)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != REF_FILE}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_same_seeds_same_bytes_across_runs_and_a_resume(method: str, source: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Run, run again (forced), then a forced run failing at step 4 (after 3 checkpointed iterations) and its
    resumed continuation: all three published sets are byte-identical with one digest."""
    monkeypatch.delenv("DDFLOW_FAULT", raising=False)
    store = ArtifactStore(tmp_path / "root")
    data = _ingest(store, source)
    first = _distill(store, data, method)
    reference = _files(first)
    assert any(name.endswith(".tar") for name in reference) and "manifest.parquet" in reference
    second = _distill(store, data, method, force=True)
    assert _files(second) == reference and second.sha256 == first.sha256
    if method == "herding":
        return
    monkeypatch.setenv("DDFLOW_FAULT", "distill:step4")
    with pytest.raises(StageError, match="injected fault in stage distill"):
        _distill(store, data, method, force=True)
    ckpt = Path(store.checkpoint_dir("distill", first.key)) / "loop.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["iteration"] == 3
    monkeypatch.delenv("DDFLOW_FAULT")
    resumed = _distill(store, data, method, force=True)
    assert _files(resumed) == reference and resumed.sha256 == first.sha256


def test_another_store_gives_the_same_set(source: Path, tmp_path: Path) -> None:
    """Two stores (different roots): same keys, byte-identical shards and manifest, same digest; dataset.json
    differs only in where the source dataset lives."""
    refs = []
    for name in ("a", "b"):
        store = ArtifactStore(tmp_path / name)
        refs.append(_distill(store, _ingest(store, source), "herding"))
    a, b = (_files(r) for r in refs)
    assert refs[0].key == refs[1].key and refs[0].sha256 == refs[1].sha256
    assert {k: v for k, v in a.items() if k != "dataset.json"} == {k: v for k, v in b.items() if k != "dataset.json"}
    meta_a, meta_b = (json.loads(f["dataset.json"]) for f in (a, b))
    meta_a.pop("source"), meta_b.pop("source")
    assert meta_a == meta_b


def _train_stages(store: ArtifactStore, data: ArtifactRef, threads: int) -> list[str]:
    """The VAE and teacher stages run from a calling thread with ``threads`` torch threads; their digests."""
    from ddcore.evaluate.teacher import TeacherConfig
    from ddcore.latent.vae import VAEConfig
    from tasks.latents import train_vae_stage
    from tasks.teacher import teacher_stage

    vae = VAEConfig(block_out_channels=(8, 16), norm_num_groups=8, epochs=1, batch_size=16,
                    mid_block_attention=False)
    teacher = TeacherConfig(epochs=1, width=8, batch_size=16)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [run_stage(store, "train_vae", train_vae_stage, {"dataset": data}, vae, "vae", device="cpu").sha256,
                run_stage(store, "train_teacher", teacher_stage, {"dataset": data}, teacher, "teacher",
                          device="cpu").sha256]
    finally:
        torch.set_num_threads(before)


def test_training_stages_give_the_same_bytes_under_any_caller_thread_count(source: Path, tmp_path: Path) -> None:
    """train_vae and train_teacher publish byte-identical outputs whether the runner's thread has 1 or 2 torch
    threads (Ray workers vs the thread runner): the stage runner pins the config's ``threads``. Control: the
    same VAE training called directly under 1 and 2 threads gives different weights, so the pin is what makes
    them equal here."""
    from ddcore.latent.vae import VAEConfig, build_vae, train_vae

    one, two = (ArtifactStore(tmp_path / f"t{n}") for n in (1, 2))
    digests = [_train_stages(store, _ingest(store, source), n) for store, n in ((one, 1), (two, 2))]
    assert digests[0] == digests[1]

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cfg = VAEConfig(block_out_channels=(8, 16), norm_num_groups=8, epochs=1, batch_size=16, mid_block_attention=False)
    weights = []
    for n in (1, 2):
        with torch_threads(n):
            vae = build_vae(cfg, 1, 28)
            train_vae(vae, x, cfg)
        weights.append(torch.cat([p.detach().flatten() for p in vae.parameters()]))
    assert not torch.equal(weights[0], weights[1])


def test_stage_threads_reads_the_config_or_a_nested_one() -> None:
    """A config's own ``threads`` wins; a round config takes its evaluation recipe's; a config without one
    computes with the runtime default."""
    from ddcore.evaluate.protocol import EvalConfig
    from ddcore.threads import DEFAULT_THREADS, stage_threads
    from tasks.configs import EvalRoundConfig, EvaluateConfig, MergeConfig

    assert stage_threads(EvalConfig(threads=5)) == 5
    assert stage_threads(EvalRoundConfig(evaluate=EvaluateConfig(eval=EvalConfig(threads=3)), index=0)) == 3
    assert stage_threads(MergeConfig(parts=2)) == DEFAULT_THREADS
