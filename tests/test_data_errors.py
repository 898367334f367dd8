"""Bad input gets one clear error line and leaves no artifact (nor a complete-looking one) behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import class_images, leftovers
from PIL import Image

from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.data.codec import encode_png
from ddcore.data.writer import ArtifactWriter
from ddcore.errors import ArtifactError, ConfigError, DataError


def _ingest(source: dict, out: Path) -> object:
    return ingest(IngestConfig.from_mapping({"source": source}), out)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


def _folder(tmp_path: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    root = tmp_path / "imgs"
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(np.zeros((h, w), np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_missing_folder(tmp_path: Path) -> None:
    """A missing source folder names the path and leaves nothing at the output."""
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "image_folder", "root": str(tmp_path / "nope")}, tmp_path / "out")
    assert "not found" in _one_line(exc) and str(tmp_path / "nope") in str(exc.value)
    assert leftovers(tmp_path, "out") == []


def test_image_of_wrong_shape(tmp_path: Path) -> None:
    """One image of a different size fails the ingest, naming the file and the fix (resize)."""
    root = _folder(tmp_path, {"a": [(8, 8), (8, 8)], "b": [(8, 8), (9, 8)]})
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "image_folder", "root": str(root)}, tmp_path / "out")
    msg = _one_line(exc)
    assert "1.png" in msg and "resize" in msg
    assert leftovers(tmp_path, "out") == []


def test_empty_class_folder(tmp_path: Path) -> None:
    """A class folder without images is refused instead of producing a class with no samples."""
    root = _folder(tmp_path, {"a": [(8, 8)], "b": []})
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "image_folder", "root": str(root)}, tmp_path / "out")
    assert "no images" in _one_line(exc)
    assert leftovers(tmp_path, "out") == []


def test_empty_class_in_arrays(tmp_path: Path) -> None:
    """An explicit class list with a class that has no train samples is refused at commit."""
    x, y = class_images(3, 2, shape=(8, 8), seed=0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "npz", "path": str(tmp_path / "d.npz"), "classes": ["a", "b", "c"]}, tmp_path / "out")
    assert "'c' has no train samples" in _one_line(exc)
    assert leftovers(tmp_path, "out") == []


def test_label_out_of_range(tmp_path: Path) -> None:
    """A label outside [0, num_classes) is refused with the offending key."""
    x, y = class_images(3, 3, shape=(8, 8), seed=0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "npz", "path": str(tmp_path / "d.npz"), "classes": ["a", "b"]}, tmp_path / "out")
    assert "out of range" in _one_line(exc)
    assert leftovers(tmp_path, "out") == []


def _shards(folder: Path, n: int, extra: dict | None = None) -> Path:
    folder.mkdir()
    x, y = class_images(n, 2, shape=(8, 8, 3), seed=0)
    with wds.TarWriter(str(folder / "s.tar"), encoder=False) as w:
        for i in range(len(y)):
            w.write({"__key__": f"k{i:04d}", "png": encode_png(x[i]), "cls": str(int(y[i])).encode(), **(extra or {})})
    return folder / "s.tar"


def test_truncated_tar(tmp_path: Path) -> None:
    """A truncated source shard fails with 'corrupt or truncated' and no artifact is published."""
    tar = _shards(tmp_path / "src", 50)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "webdataset", "urls": {"train": str(tar)}}, tmp_path / "out")
    assert "corrupt or truncated" in _one_line(exc)
    assert leftovers(tmp_path, "out") == []


def test_garbage_tar(tmp_path: Path) -> None:
    """A file that is not a tar at all fails the same way."""
    (tmp_path / "g.tar").write_bytes(b"\x00not a tar" * 100 + b"x" * 1000)
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "webdataset", "urls": {"train": str(tmp_path / "g.tar")}}, tmp_path / "out")
    _one_line(exc)
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("member", ["pyd", "pickle", "pth"])
def test_pickle_members_refused(tmp_path: Path, member: str) -> None:
    """Shards carrying pickle-like members are refused, never decoded."""
    tar = _shards(tmp_path / "src", 2, extra={member: b"\x80\x04K\x01."})
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "webdataset", "urls": {"train": str(tar)}}, tmp_path / "out")
    assert f".{member}" in _one_line(exc)


def test_npz_with_pickled_objects_refused(tmp_path: Path) -> None:
    """An .npz whose arrays need pickle is refused instead of unpickled."""
    np.savez(tmp_path / "d.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "npz", "path": str(tmp_path / "d.npz")}, tmp_path / "out")
    assert "pickle" in _one_line(exc)


def test_cifar_refuses_code_in_pickle(tmp_path: Path) -> None:
    """A CIFAR batch that references anything but numpy arrays is refused (no code runs)."""
    import pickle

    root = tmp_path / "c"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as exc:
        _ingest({"kind": "cifar", "root": str(root)}, tmp_path / "out")
    msg = _one_line(exc)
    assert "refused to unpickle" in msg and "print" in msg


def test_keys_cannot_escape(tmp_path: Path) -> None:
    """Keys with path separators or '..' are rejected by the writer."""
    with ArtifactWriter(tmp_path / "o", name="t", classes=["a"], image_shape=(1, 2, 2), source={}) as w:
        for bad in ("../x", "a/b", "a.b", ".."):
            with pytest.raises(DataError):
                w.add("train", bad, np.zeros((2, 2, 1), np.uint8), 0)
    assert leftovers(tmp_path, "o") == []


def test_interrupted_writer_leaves_nothing_complete(tmp_path: Path) -> None:
    """An exception mid-write removes the temp folder; the destination never appears."""
    writer = ArtifactWriter(tmp_path / "o", name="t", classes=["a"], image_shape=(1, 2, 2), source={})
    with pytest.raises(RuntimeError), writer as w:
        w.add("train", "k1", np.zeros((2, 2, 1), np.uint8), 0)
        raise RuntimeError("killed")
    assert leftovers(tmp_path, "o") == []


def _small_artifact(tmp_path: Path) -> Path:
    x, y = class_images(5, 2, shape=(8, 8), seed=0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    _ingest({"kind": "npz", "path": str(tmp_path / "d.npz")}, tmp_path / "art")
    return tmp_path / "art"


def test_truncated_shard_detected(tmp_path: Path) -> None:
    """A shard truncated after publishing fails verification instead of being read."""
    art = _small_artifact(tmp_path)
    shard = art / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(ArtifactError) as exc:
        open_artifact(art)
    assert "truncated" in _one_line(exc)


def test_manifest_digest_mismatch_detected(tmp_path: Path) -> None:
    """Editing dataset.json's digest (or the manifest) is detected on open."""
    art = _small_artifact(tmp_path)
    meta = json.loads((art / "dataset.json").read_text())
    meta["digest"] = "0" * 64
    (art / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as exc:
        open_artifact(art)
    assert "digest mismatch" in _one_line(exc)


def test_tampered_sample_detected_on_read(tmp_path: Path) -> None:
    """A payload altered in place (same size) fails its per-sample sha256 on read."""
    art = _small_artifact(tmp_path)
    a = open_artifact(art)
    r = int(a.rows("train")[0])
    shard = art / a.shards[r]
    data = bytearray(shard.read_bytes())
    data[a.offsets[r] + 40] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as exc:
        open_artifact(art).read_arrays(np.array([r]))
    assert "sha256" in _one_line(exc)


def test_incomplete_artifact_is_not_an_artifact(tmp_path: Path) -> None:
    """A folder without dataset.json (e.g. a killed write) is reported as incomplete."""
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(ArtifactError) as exc:
        open_artifact(tmp_path / "half")
    assert "incomplete" in _one_line(exc)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    """Ingesting onto an existing artifact refuses unless overwrite is asked for."""
    _small_artifact(tmp_path)
    with pytest.raises(ArtifactError) as exc:
        _ingest({"kind": "npz", "path": str(tmp_path / "d.npz")}, tmp_path / "art")
    assert "--overwrite" in _one_line(exc)


def test_unknown_config_key() -> None:
    """An unknown config key is one error line naming the key."""
    with pytest.raises(ConfigError) as exc:
        IngestConfig.from_mapping({"source": {"kind": "npz", "path": "x", "bogus": 1}}, where="cfg.yaml")
    assert "unknown key 'source.npz.bogus'" in _one_line(exc)
