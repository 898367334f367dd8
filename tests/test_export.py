"""ddflow export: each format's layout through the real CLI, the round trip back through ddflow ingest (same digest
where the format keeps keys and order), the .pt/hf readers' checks, atomic writes and one-line errors."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import class_images, leftovers
from PIL import Image
from typer.testing import CliRunner

from ddcore.data.artifact import DatasetArtifact
from ddcore.data.codec import decode_png
from ddcore.data.export import class_folders
from ddcore.data.synthetic_io import load_synthetic, save_synthetic
from ddcore.synthetic import SyntheticSet
from flows.cli import app

runner = CliRunner()
SYN_CLASSES = ["T-shirt/top", "Trouser", "Bag"]


def _ok(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def _err(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.output, r.output
    return lines[0]


def _ingest(src: Path | str, out: Path, *extra: str) -> DatasetArtifact:
    _ok("ingest", str(src), "--out", str(out), *extra)
    return DatasetArtifact.open(out, verify="full")


@pytest.fixture
def npz_art(tmp_path: Path) -> DatasetArtifact:
    """RGB 8x8, 3 classes, train + test, labels interleaved (npz order), 5 samples per shard."""
    x, y = class_images(4, 3, shape=(8, 8, 3), seed=0)
    xt, yt = class_images(2, 3, shape=(8, 8, 3), seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    return _ingest(tmp_path / "d.npz", tmp_path / "art", "--shard-size", "5")


@pytest.fixture
def folder_art(tmp_path: Path) -> DatasetArtifact:
    """A greyscale ImageFolder source (classes 'cat', 'dog'), split 60/40 into train/test at ingest."""
    x, y = class_images(5, 2, shape=(8, 8), seed=3)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = tmp_path / "imgs" / ("cat", "dog")[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return _ingest(tmp_path / "imgs", tmp_path / "art", "--test-fraction", "0.4")


@pytest.fixture
def syn_art(tmp_path: Path) -> DatasetArtifact:
    """A float (npy) synthetic set, IPC 2 over 3 classes, with per-image weights and soft labels; class names
    that are neither sorted nor folder-safe."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(2)
    sset = SyntheticSet(images=torch.randn(6, 1, 8, 8, generator=g) * 2, labels=labels, mean=(0.3,), std=(0.35,),
                        num_classes=3, method="dm", weights=torch.tensor([0.5, 1.5, 1.0, 2.0, 0.25, 0.75]),
                        soft_labels=torch.softmax(torch.randn(6, 3, generator=g), 1))
    save_synthetic(sset, tmp_path / "syn", classes=SYN_CLASSES, source={"name": "toy"})
    return DatasetArtifact.open(tmp_path / "syn")


def _split_arrays(art: DatasetArtifact, split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = art.rows(split)
    return art.read_arrays(rows), art.labels[rows]


def _class_major(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def test_class_folders_sort_in_label_order() -> None:
    """Safe, sorted class names are kept as folder names; otherwise every folder gets a zero-padded label prefix,
    so sorting the folders (as ImageFolder readers do) gives back label order."""
    assert class_folders(["cat", "dog"]) == ["cat", "dog"]
    assert class_folders(SYN_CLASSES) == ["0_T-shirt_top", "1_Trouser", "2_Bag"]
    names = class_folders([str(i) for i in range(11)])
    assert names[10] == "10_10" and sorted(names) == names
    assert class_folders([".hidden", "b"]) == ["0_hidden", "1_b"]


def test_png_is_one_split_in_class_folders(npz_art: DatasetArtifact, tmp_path: Path) -> None:
    """png writes the train split only, one folder per class, zero-padded names in stored order within the class,
    pixel-identical to the artifact, and no labels.json when there are no weights or soft labels."""
    out = tmp_path / "png"
    assert "train 12" in _ok("export", str(npz_art.uri), "--format", "png", "--out", str(out))
    x, y = _split_arrays(npz_art, "train")
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2"]
    for c in range(3):
        files = sorted((out / str(c)).iterdir())
        assert [f.name for f in files] == [f"{i:06d}.png" for i in range(4)]
        got = np.stack([decode_png(f.read_bytes(), channels=3) for f in files])
        assert np.array_equal(got, x[y == c])
    assert not (out / "labels.json").exists()


def test_png_of_a_weighted_soft_set_writes_labels_json(syn_art: DatasetArtifact, tmp_path: Path) -> None:
    """A set with weights and soft labels: PNGs (its 8-bit previews) under label-prefixed class folders, and
    labels.json maps every file to its key, label, weight and soft label."""
    out = tmp_path / "png"
    output = _ok("export", str(syn_art.uri), "--format", "png", "--out", str(out))
    assert "labels.json" in output and "quantised" in output
    doc = json.loads((out / "labels.json").read_text())
    assert doc["classes"] == SYN_CLASSES and doc["folders"] == ["0_T-shirt_top", "1_Trouser", "2_Bag"]
    sset = load_synthetic(syn_art.uri)
    assert [s["file"] for s in doc["samples"]][:2] == ["0_T-shirt_top/000000.png", "0_T-shirt_top/000001.png"]
    assert np.allclose([s["weight"] for s in doc["samples"]], sset.weights.numpy())
    assert np.allclose([s["soft_label"] for s in doc["samples"]], sset.soft_labels.numpy())
    preview = (sset.pixels().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(decode_png((out / doc["samples"][3]["file"]).read_bytes())[:, :, 0], preview[3, 0])


def test_imagefolder_of_an_imagefolder_source_round_trips_to_the_same_digest(folder_art: DatasetArtifact,
                                                                              tmp_path: Path) -> None:
    """imagefolder writes train/ and test/ class trees; ddflow ingest of it gives the original's digest when the
    original came from an ImageFolder (same keys, same class-major order)."""
    out = tmp_path / "if"
    _ok("export", str(folder_art.uri), "--format", "imagefolder", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "dog"]
    back = _ingest(out, tmp_path / "back")
    assert back.digest == folder_art.digest and back.meta.classes == ["cat", "dog"]


def test_imagefolder_of_an_npz_source_keeps_images_and_labels(npz_art: DatasetArtifact, tmp_path: Path) -> None:
    """From an npz source the keys differ (ImageFolder keys are class-major), so the digest differs; what holds is
    the strongest equality: per split, the class-major (stable) images and labels are identical."""
    out = tmp_path / "if"
    _ok("export", str(npz_art.uri), "--format", "imagefolder", "--out", str(out))
    back = _ingest(out, tmp_path / "back")
    assert back.digest != npz_art.digest
    for split in ("train", "test"):
        x0, y0 = _class_major(*_split_arrays(npz_art, split))
        x1, y1 = _split_arrays(back, split)
        assert np.array_equal(x0, x1) and np.array_equal(y0, y1)


def test_pt_loads_with_weights_only_and_round_trips_to_the_same_digest(npz_art: DatasetArtifact,
                                                                       tmp_path: Path) -> None:
    """pt writes dataset.pt that torch.load(weights_only=True) reads: float32 [N, C, H, W] pixels equal to the
    uint8 images / 255, int64 labels, keys, splits, class names, mean/std; ddflow ingest of it (same --shard-size)
    gives the original digest."""
    out = tmp_path / "pt"
    _ok("export", str(npz_art.uri), "--format", "pt", "--out", str(out))
    d = torch.load(out / "dataset.pt", weights_only=True)
    assert d["images"].dtype == torch.float32 and d["images"].shape == (18, 3, 8, 8)
    assert d["labels"].dtype == torch.int64 and d["splits"] == ["train"] * 12 + ["test"] * 6
    assert "weights" not in d and "soft_labels" not in d
    assert d["class_names"] == ["0", "1", "2"] and d["mean"] == npz_art.meta.mean and d["std"] == npz_art.meta.std
    x, y = _split_arrays(npz_art, "train")
    assert torch.equal(d["images"][:12], torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(d["labels"][:12], torch.from_numpy(y))
    assert _ingest(out, tmp_path / "back", "--shard-size", "5").digest == npz_art.digest
    assert _ingest(out / "dataset.pt", tmp_path / "back2", "--shard-size", "5").digest == npz_art.digest


def test_hf_reads_with_pyarrow_and_datasets_and_round_trips(npz_art: DatasetArtifact, tmp_path: Path) -> None:
    """hf writes a save_to_disk DatasetDict: pyarrow reads image/label/key columns and the ClassLabel names,
    datasets.load_from_disk reads it (when installed), and ddflow ingest gives the original digest."""
    out = tmp_path / "hf"
    _ok("export", str(npz_art.uri), "--format", "hf", "--out", str(out))
    assert json.loads((out / "dataset_dict.json").read_text())["splits"] == ["train", "test"]
    state = json.loads((out / "train" / "state.json").read_text())
    with pa.memory_map(str(out / "train" / state["_data_files"][0]["filename"])) as f:
        table = pa.ipc.open_stream(f).read_all()
    assert table.column_names == ["image", "label", "key"]
    assert table.column("label").to_pylist() == npz_art.labels[npz_art.rows("train")].tolist()
    x, _ = _split_arrays(npz_art, "train")
    assert np.array_equal(decode_png(table.column("image")[0].as_py()["bytes"]), x[0])
    info = json.loads((out / "train" / "dataset_info.json").read_text())
    assert info["features"]["label"] == {"names": ["0", "1", "2"], "_type": "ClassLabel"}
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_from_disk(str(out))
    assert ds["test"].num_rows == 6 and ds["train"].features["label"].names == ["0", "1", "2"]
    assert np.array_equal(np.asarray(ds["train"][0]["image"].convert("RGB")), x[0])
    assert _ingest(out, tmp_path / "back", "--shard-size", "5").digest == npz_art.digest


@pytest.mark.parametrize("fmt", ["pt", "hf"])
def test_pt_and_hf_carry_weights_and_soft_labels(fmt: str, syn_art: DatasetArtifact, tmp_path: Path) -> None:
    """A float synthetic set with weights and soft labels: pt keeps the clipped float pixels, hf its 8-bit
    previews; both carry weights and soft labels, and the ingested artifact has the same weights, soft labels,
    labels, class names and 8-bit pixels (the float originals cannot round-trip to their digest)."""
    out = tmp_path / fmt
    _ok("export", str(syn_art.uri), "--format", fmt, "--out", str(out))
    sset = load_synthetic(syn_art.uri)
    pix = sset.pixels().clamp(0, 1)
    if fmt == "pt":
        d = torch.load(out / "dataset.pt", weights_only=True)
        assert torch.equal(d["images"], pix) and torch.equal(d["weights"], sset.weights)
        assert torch.equal(d["soft_labels"], sset.soft_labels)
    back = _ingest(out, tmp_path / "back")
    assert back.meta.classes == SYN_CLASSES and back.digest != syn_art.digest
    assert np.allclose(back.weights, sset.weights.numpy())
    assert torch.allclose(back.soft_labels("train"), sset.soft_labels)
    x, y = _split_arrays(back, "train")
    assert np.array_equal(y, sset.labels.numpy())
    assert np.array_equal(x.transpose(0, 3, 1, 2), (pix.numpy() * 255 + 0.5).astype(np.uint8))


def test_ddranking_style_soft_labels_in_labels_are_accepted(tmp_path: Path) -> None:
    """A .pt whose 'labels' are float [N, K] soft labels (DD-Ranking's labels.pt) ingests with hard labels =
    argmax and the soft labels kept."""
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    torch.save({"images": torch.rand(4, 1, 4, 4), "labels": soft}, tmp_path / "s.pt")
    art = _ingest(tmp_path / "s.pt", tmp_path / "art")
    assert art.labels.tolist() == [0, 1, 0, 1] and torch.equal(art.soft_labels("train"), soft)


def test_overwrite_replaces_and_failures_leave_nothing(npz_art: DatasetArtifact, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-empty --out is refused (one line), --overwrite replaces it whole, an empty folder is used, and an
    export that fails midway (here: the disk fills up, reported as one line) leaves neither the folder nor its
    temporary sibling."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "pass --overwrite" in _err("export", str(npz_art.uri), "--format", "pt", "--out", str(out))
    _ok("export", str(npz_art.uri), "--format", "pt", "--out", str(out), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["dataset.pt"]
    (tmp_path / "empty").mkdir()
    _ok("export", str(npz_art.uri), "--format", "png", "--out", str(tmp_path / "empty"))
    import ddcore.data.export as export

    def boom(art: DatasetArtifact, splits: list[str], tmp: Path) -> list[str]:
        (tmp / "half.png").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(export._WRITERS, "png", boom)
    assert "no space left on device" in _err("export", str(npz_art.uri), "--format", "png", "--out",
                                             str(tmp_path / "failed"))
    assert leftovers(tmp_path, "failed") == []


def test_bad_export_arguments_are_one_line(npz_art: DatasetArtifact, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown format, missing SET, unknown split, hf without the datasets package, and an --out that is,
    holds or lies inside the SET (even with --overwrite): one error line each, exit 2, nothing written or
    deleted."""
    art, out = str(npz_art.uri), str(tmp_path / "o")
    assert "unknown format 'tiff'; choose png" in _err("export", art, "--format", "tiff", "--out", out)
    assert "no dataset artifact" in _err("export", str(tmp_path / "nope"), "--format", "png", "--out", out)
    assert "split 'val' not in artifact" in _err("export", art, "--format", "png", "--split", "val", "--out", out)
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert "needs the 'datasets' package" in _err("export", art, "--format", "hf", "--out", out)
    assert leftovers(tmp_path, "o") == []
    for inside in (art, f"{art}/sub", str(Path(art).parent)):  # --overwrite must never delete the source
        assert "overlaps the artifact" in _err("export", art, "--format", "pt", "--out", inside, "--overwrite")
    assert DatasetArtifact.open(art, verify="full").meta.digest == npz_art.meta.digest
    assert "imagefolder" in _ok("export", "--help")


class _Pickled:
    """An arbitrary class: torch.load(weights_only=True) must refuse to rebuild it."""


def test_bad_pt_files_are_one_line(tmp_path: Path) -> None:
    """ddflow ingest of a .pt: a pickled object, a bare tensor, normalised (out-of-range) pixels and mismatched
    labels each give one error line naming the entry."""
    torch.save({"images": _Pickled()}, tmp_path / "evil.pt")
    assert "torch.load(weights_only=True)" in _err("ingest", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "o"))
    torch.save(torch.rand(2, 1, 4, 4), tmp_path / "bare.pt")
    assert "must hold a dict with 'images' and 'labels' (found Tensor)" in _err(
        "ingest", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "o"))
    torch.save({"images": torch.randn(2, 1, 4, 4) * 3, "labels": torch.tensor([0, 1])}, tmp_path / "norm.pt")
    assert "x * std + mean" in _err("ingest", str(tmp_path / "norm.pt"), "--out", str(tmp_path / "o"))
    torch.save({"images": torch.rand(2, 1, 4, 4), "labels": torch.tensor([0, 1, 1])}, tmp_path / "len.pt")
    assert "'labels': expected int64 [2]" in _err("ingest", str(tmp_path / "len.pt"), "--out", str(tmp_path / "o"))
    assert leftovers(tmp_path, "o") == []


def test_bad_hf_folders_are_one_line(npz_art: DatasetArtifact, tmp_path: Path) -> None:
    """ddflow ingest of a damaged Hugging Face folder (a split without state.json, or without an image column):
    one error line."""
    out = tmp_path / "hf"
    _ok("export", str(npz_art.uri), "--format", "hf", "--out", str(out))
    (out / "test" / "state.json").unlink()
    assert "not a readable Hugging Face dataset folder" in _err("ingest", str(out), "--out", str(tmp_path / "o"))
    table = pa.table({"img": [b"x"], "label": [0]})
    (tmp_path / "cols").mkdir()
    with pa.OSFile(str(tmp_path / "cols" / "data.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (tmp_path / "cols" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    (tmp_path / "cols" / "dataset_info.json").write_text("{}")
    assert "needs columns 'image' and 'label'" in _err("ingest", str(tmp_path / "cols"), "--out", str(tmp_path / "o"))
