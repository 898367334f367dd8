"""The scripts in examples/ run on tiny data through their main(argv), and each does what its docstring says; the
Python API (ddcore/api.py) they use gives the pipeline stage's set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import class_images, write_fake_fmnist

from ddcore import api
from ddcore.data.artifact import DatasetArtifact, open_artifact

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--ipc", "1", "--iterations", "2", "--width", "8", "--batch-real", "4", "--eval-epochs", "1",
        "--num-eval", "2"]


def _example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` with its folder first on sys.path, as when it runs as a script."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DatasetArtifact:
    """3 classes of 16x16 greyscale images (8 train, 3 test each) from an npz, ingested with the API."""
    root = tmp_path_factory.mktemp("tiny")
    x, y = class_images(8, 3, shape=(16, 16), seed=0)
    xt, yt = class_images(3, 3, shape=(16, 16), seed=1)
    np.savez(root / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    return api.load_dataset({"kind": "npz", "path": str(root / "d.npz"), "classes": ["a", "b", "c"]},
                            out=root / "data")


def test_dm_example_ingests_distils_and_saves_a_verified_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """01_distill_dm.py from Fashion-MNIST IDX files: the source is ingested (4 images per class and split), and the
    saved set holds IPC x classes images, class-major, that the artifact reader verifies in full; the score line
    names the accuracy, the random baseline at the same IPC and the IOR."""
    fm = tmp_path / "fm"
    fm.mkdir()
    write_fake_fmnist(fm)
    out = tmp_path / "out"
    saved = _example("01_distill_dm").main(["--data", str(fm), "--out", str(out), "--max-per-class", "4", *TINY])
    data = open_artifact(out / "data")
    assert data.meta.counts["train"]["total"] == 40 and data.meta.source["kind"] == "fashion_mnist"
    art = open_artifact(saved, verify="full")
    assert art.meta.counts["train"]["per_class"] == [1] * 10
    sset = api.load_set(saved)
    assert sset.method == "dm" and sset.labels.tolist() == list(range(10))
    assert sset.extra["dataset_digest"] == data.digest
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("dm: acc ") and "random" in line and "(IPC 1)" in line and "IOR" in line


def test_all_methods_example_prints_one_row_per_registered_method(
        tiny: DatasetArtifact, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """02_all_methods.py: the table (printed and in OUT/methods.md) has a header and one row per registered method,
    in registry order, each with the set's image count (NCFM at factor 2 decodes 4 images per stored mosaic)."""
    table = _example("02_all_methods").main(["--data", tiny.uri, "--out", str(tmp_path), *TINY])
    rows = [line.split("|")[1:-1] for line in table[2:]]
    assert [r[0].strip() for r in rows] == list(api.method_names())
    images = {r[0].strip(): int(r[1]) for r in rows}
    assert images == {"dm": 3, "hdd": 3, "ncfm": 12, "random": 3, "herding": 3, "ddoq": 3, "d4m": 3}
    assert (tmp_path / "methods.md").read_text().splitlines() == table
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")] == table


def test_ddoq_example_weights_cells_and_beats_uniform_w2(tiny: DatasetArtifact, tmp_path: Path) -> None:
    """03_ddoq_pixels.py at IPC 2 on pixels: DDOQ's saved weights are the cell masses scaled to mean one per class
    (each class sums to IPC, not all equal here), D4M's are all one; on the same centroids DDOQ's weighted W2 is at
    most the uniform one, and both sets were quantized on the same centroids (equal images)."""
    found = _example("03_ddoq_pixels").main(["--data", tiny.uri, "--out", str(tmp_path), *TINY, "--ipc", "2"])
    ddoq, d4m = api.load_set(found["ddoq"]["set"]), api.load_set(found["d4m"]["set"])
    assert ddoq.weights is not None and d4m.weights is not None
    per_class = torch.zeros(3).index_add_(0, ddoq.labels, ddoq.weights)
    assert torch.allclose(per_class, torch.full((3,), 2.0)) and not torch.allclose(ddoq.weights, d4m.weights)
    assert torch.equal(d4m.weights, torch.ones(6)) and torch.equal(ddoq.images, d4m.images)
    w2 = found["ddoq"]["w2"]
    assert w2["mean_w2_weighted"] <= w2["mean_w2_uniform"] + 1e-9


def test_export_example_writes_every_format_and_reads_them_back(tiny: DatasetArtifact, tmp_path: Path) -> None:
    """04_export.py without --set: a herding set is saved and exported in every format; the pt file (loaded with
    weights_only) holds the set's labels and its pixels clipped to [0, 1], and the imagefolder export ingests back
    with the set's per-class counts."""
    written = _example("04_export").main(["--data", tiny.uri, "--out", str(tmp_path), *TINY])
    assert set(written) == set(api.FORMATS)
    sset = api.load_set(tmp_path / "herding-ipc1")
    pt = torch.load(written["pt"] / "dataset.pt", weights_only=True)
    assert torch.equal(pt["labels"], sset.labels) and torch.equal(pt["images"], sset.pixels().clamp(0, 1))
    back = open_artifact(tmp_path / "reingested")
    assert back.meta.counts["train"]["per_class"] == [1, 1, 1] and back.meta.classes == ["a", "b", "c"]
    assert sorted(p.name for p in (written["png"]).iterdir()) == ["a", "b", "c"]


def test_api_set_is_the_distill_stage_set(tiny: DatasetArtifact, tmp_path: Path) -> None:
    """api.distill with a method name, IPC, seed and fields gives the set the pipeline's distill stage makes from the
    same config: the saved artifacts have the same digest."""
    from tasks.distill import distill_stage
    from tasks.runtime.refs import ArtifactRef
    from tasks.runtime.stage import StageContext

    fields = {"iterations": 2, "width": 8, "batch_real": 4}
    sset = api.distill(tiny, "dm", ipc=1, seed=3, **fields)
    mine = api.save_set(sset, tiny, tmp_path / "api")
    ref = ArtifactRef(uri=tiny.uri, sha256=tiny.digest, stage="ingest", key="0" * 16, kind="dataset")
    ctx = StageContext(stage="distill", key="1" * 16, checkpoint_dir=str(tmp_path / "ckpt"), device="cpu", seed=3)
    distill_stage({"dataset": ref}, api.method_config("dm", ipc=1, seed=3, **fields), str(tmp_path / "stage"), ctx)
    assert open_artifact(tmp_path / "stage").digest == mine.digest


def test_api_evaluation_is_the_pipeline_rounds(tiny: DatasetArtifact, tmp_path: Path) -> None:
    """api.evaluate gives, round by round, the accuracies and network seeds of the pipeline's evaluate_round stage
    (on the saved set) and baseline_round stage (subset seeds from 100, the pipeline's default)."""
    from tasks.configs import BaselineEvalConfig, BaselineRoundConfig, EvalRoundConfig, EvaluateConfig
    from tasks.evaluate import baseline_round_stage, evaluate_round_stage, read_results
    from tasks.runtime.refs import ArtifactRef
    from tasks.runtime.stage import StageContext

    cfg = api.EvalConfig.dm_protocol(epochs=1, num_eval=2, width=8)
    sset = api.distill(tiny, "random", ipc=1, seed=5)
    saved = api.save_set(sset, tiny, tmp_path / "set")
    ev = api.evaluate(sset, tiny, config=cfg)
    refs = {"dataset": ArtifactRef(uri=tiny.uri, sha256=tiny.digest, stage="ingest", key="0" * 16, kind="dataset"),
            "synthetic": ArtifactRef(uri=saved.uri, sha256=saved.digest, stage="distill", key="1" * 16,
                                     kind="synthetic")}
    for i in range(2):
        ctx = StageContext(stage="evaluate_round", key="2" * 16, checkpoint_dir=str(tmp_path / f"ck{i}"),
                           device="cpu", seed=0)
        evaluate_round_stage(refs, EvalRoundConfig(evaluate=EvaluateConfig(eval=cfg), index=i), str(tmp_path / f"e{i}"),
                             ctx)
        baseline_round_stage(refs, BaselineRoundConfig(baseline=BaselineEvalConfig(eval=cfg, ipc=1), index=i),
                             str(tmp_path / f"b{i}"), ctx)
        syn, rdm = read_results(str(tmp_path / f"e{i}")), read_results(str(tmp_path / f"b{i}"))
        assert (syn["acc"], syn["seed"]) == (ev.synthetic.accs[i], ev.synthetic.seeds[i])
        assert (rdm["acc"], rdm["seed"], rdm["subset_seed"]) == (ev.random.accs[i], ev.random.seeds[i],
                                                                 ev.random_seeds[i])
