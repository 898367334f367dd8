"""Catalogue rows (docs/errors.md) for hostile or malformed inputs: show/info/lineage/evaluate arguments, config
files, shards, CIFAR batches and image folders (issue 14). ``INPUT_CASES`` is merged into
``tests/error_cases.py``'s ``CASES``; the builders follow tests/error_case_support.py (no assertions here)."""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from conftest import class_images
from error_case_support import Case, _artifact, _npz, _yaml, run_config
from PIL import Image

from ddcore.data import IngestConfig, ingest
from ddcore.data.codec import encode_png
from flows.temp_server import free_port


def _tar(tmp: Path, members: list[tuple[str, bytes]], name: str = "s.tar") -> str:
    """A WebDataset-style tar of ``members`` (name, bytes) written with tarfile, so any member name is possible."""
    path = tmp / name
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _shard(tmp: Path, *extra: tuple[str, bytes]) -> str:
    """Four good samples (labels 0/1), then ``extra`` members."""
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    good = [(f"k{i:04d}.{ext}", data) for i in range(4) for ext, data in (("png", png), ("cls", str(i % 2).encode()))]
    return _tar(tmp, [*good, *extra])


def _labelled(tmp: Path, label: bytes) -> str:
    return _shard(tmp, ("k0009.png", encode_png(np.zeros((8, 8, 3), np.uint8))), ("k0009.cls", label))


def _cifar_batches(tmp: Path, data: np.ndarray, labels: list[int]) -> str:
    folder = tmp / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return str(folder)


def _sixteen_bit_folder(tmp: Path) -> str:
    """Two classes of 8-bit RGB PNGs, plus one 16-bit greyscale PNG (values up to 40000) in each."""
    for cls in ("a", "b"):
        (tmp / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp / "imgs" / cls / "0.png")
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp / "imgs" / cls / "1.png")
    return str(tmp / "imgs")


def _synthetic(tmp: Path, num_classes: int, shape: tuple[int, int, int]) -> str:
    """A synthetic-set artifact (``save_synthetic``) of one zero image per class."""
    import torch

    from ddcore.data.synthetic_io import save_synthetic
    from ddcore.synthetic import SyntheticSet

    sset = SyntheticSet(images=torch.zeros(num_classes, *shape), labels=torch.arange(num_classes), mean=(0.5,),
                        std=(0.25,), num_classes=num_classes, method="random")
    save_synthetic(sset, tmp / "syn", classes=[str(i) for i in range(num_classes)], source={"name": "syn"})
    return str(tmp / "syn")


def _with_test(tmp: Path) -> str:
    """A 3-class, 1x8x8 dataset artifact with a test split."""
    x, y = class_images(3, 3, shape=(8, 8), seed=1)
    ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": _npz(tmp, x_test=x, y_test=y)}}),
           tmp / "data")
    return str(tmp / "data")


def _evaluate(tmp: Path, fmnist: Path, synthetic: str, data: str | None) -> Case:
    args = ["evaluate", synthetic, "--config", run_config(tmp, fmnist), "--root", str(tmp / "root")]
    return Case(args=[*args, "--data", data] if data else args)


@contextmanager
def _no_s3fs() -> Iterator[None]:
    """As if s3fs were not installed (whether it is or not)."""
    registry = importlib.import_module("fsspec.registry")._registry
    saved_module, saved_class = sys.modules.get("s3fs"), registry.pop("s3", None)
    sys.modules["s3fs"] = None  # type: ignore[assignment] - makes 'import s3fs' raise ImportError
    try:
        yield
    finally:
        if saved_module is None:
            sys.modules.pop("s3fs", None)
        else:
            sys.modules["s3fs"] = saved_module
        if saved_class is not None:
            registry["s3"] = saved_class


def _deep_config(tmp: Path) -> str:
    return _yaml(tmp, "a: " + "[" * 5000 + "\n")


def _alias_bomb(tmp: Path) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return _yaml(tmp, "\n".join(lines) + "\n")


def _binary(tmp: Path) -> str:
    Image.new("RGB", (4, 4)).save(tmp / "c.png")
    return str(tmp / "c.png")


CaseFn = Callable[[Path, Path], Case]
INPUT_CASES: dict[str, CaseFn] = {
    # config files (item 5)
    "config-binary": lambda t, f: Case(args=["run", _binary(t)]),
    "config-yaml-tag": lambda t, f: Case(args=["run", _yaml(t, f'!!python/object/apply:os.system ["touch {t}/r"]')]),
    "config-deep": lambda t, f: Case(args=["run", _deep_config(t)]),
    "config-alias-bomb": lambda t, f: Case(args=["plan", _alias_bomb(t)]),
    "config-run-name-long": lambda t, f: Case(args=["run", run_config(t, f, "methods: {random: {}}\nname: "
                                                                         + "a" * 1_000_000)]),
    "config-override-yaml": lambda t, f: Case(args=["run", run_config(t, f), "--set", "ipcs=[1"]),
    # ddflow show (item 1)
    "show-out-folder": lambda t, f: Case(args=["show", str(_artifact(t)), "--out", str(t / "nope" / "g.png")]),
    "show-out-unwritable": lambda t, f: Case(args=["show", str(_artifact(t)), "--out", "/proc/ddflow-grid.png"]),
    "show-out-is-folder": lambda t, f: Case(args=["show", str(_artifact(t)), "--out", str(t)]),
    "show-option-range": lambda t, f: Case(args=["show", str(_artifact(t)), "--per-class", "0", "--out",
                                                 str(t / "g.png")]),
    "show-grid-too-large": lambda t, f: Case(args=["show", str(_artifact(t)), "--scale", "100000", "--out",
                                                   str(t / "g.png")]),
    # storage URLs (items 2, 3)
    "storage-protocol": lambda t, f: Case(args=["info", "foo://x"]),
    "storage-package": lambda t, f: Case(args=["info", "s3://bucket/x"], context=_no_s3fs),
    "artifact-unreachable": lambda t, f: Case(args=["info", f"http://127.0.0.1:{free_port()}/x"]),
    "artifact-is-file": lambda t, f: (t / "x.txt").write_text("x") and Case(args=["info", str(t / "x.txt")]),
    "lineage-root-unreachable": lambda t, f: Case(args=["lineage", "X", "--root",
                                                        f"http://127.0.0.1:{free_port()}/x"]),
    # ddflow evaluate (item 4)
    "evaluate-option": lambda t, f: _evaluate(t, f, _synthetic(t, 3, (1, 8, 8)), None),
    "evaluate-no-test": lambda t, f: _evaluate(t, f, _synthetic(t, 3, (1, 8, 8)), str(_artifact(t))),
    "evaluate-classes": lambda t, f: _evaluate(t, f, _synthetic(t, 2, (1, 8, 8)), _with_test(t)),
    "evaluate-shape": lambda t, f: _evaluate(t, f, _synthetic(t, 3, (1, 4, 4)), _with_test(t)),
    # shards, CIFAR batches, image folders (items 6-9)
    "data-shard-label-huge": lambda t, f: Case(args=["ingest", _labelled(t, b"100000000"), "--out", str(t / "o")]),
    "data-shard-label-text": lambda t, f: Case(args=["ingest", _labelled(t, b"1e8"), "--out", str(t / "o")]),
    "data-shard-empty": lambda t, f: Case(args=["ingest", _tar(t, []), "--out", str(t / "o")]),
    "data-shard-traversal": lambda t, f: Case(args=["ingest", _shard(t, ("../x.png", b"x"), ("../x.cls", b"0")),
                                                    "--out", str(t / "o")]),
    "data-shard-no-ext": lambda t, f: Case(args=["ingest", _shard(t, ("README", b"notes")), "--out", str(t / "o")]),
    "data-cifar-shape": lambda t, f: Case(args=["ingest", _cifar_batches(t, np.zeros((10, 100), np.uint8),
                                                                         list(range(10))), "--out", str(t / "o")]),
    "data-cifar-labels": lambda t, f: Case(args=["ingest", _cifar_batches(t, np.zeros((10, 3072), np.uint8),
                                                                          list(range(7))), "--out", str(t / "o")]),
    "data-16bit": lambda t, f: Case(args=["ingest", _sixteen_bit_folder(t), "--out", str(t / "o")]),
}
