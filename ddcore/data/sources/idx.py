"""Fashion-MNIST (and MNIST-format) IDX files, gzip or plain."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddcore.data.sources.base import Sample
from ddcore.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Where Fashion-MNIST is looked for when no root is given (Debian package, then the ddflow cache).
DEFAULT_ROOTS = (
    "/usr/share/datasets/fashion-mnist",
    "~/.cache/ddflow/fashion-mnist",
    "~/.cache/ddflow/FashionMNIST/raw",
)


def find_fashion_mnist(root: str | None) -> Path:
    """Locate a folder holding the four IDX files; one clear error when none does."""
    candidates = [root] if root else [os.environ.get("DDFLOW_FASHION_MNIST", ""), *DEFAULT_ROOTS]
    for cand in candidates:
        if not cand:
            continue
        p = Path(cand).expanduser()
        if p.is_dir() and all(_locate(p, f) for pair in FILES.values() for f in pair):
            return p
    where = root or ", ".join(DEFAULT_ROOTS)
    raise DataError(
        f"Fashion-MNIST IDX files not found in {where}; install the Debian package "
        "'dataset-fashion-mnist' (make data) or pass --root to a folder with the four .gz files"
    )


def _locate(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (magic, dims, uint8 payload) into an array; validate the sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the file is truncated or not gzip") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic); use the original IDX files")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes), file has {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


class FashionMNISTSource:
    """The four Fashion-MNIST IDX files: 60k train / 10k test, 28x28x1, 10 classes."""

    def __init__(self, root: str | None = None, *, name: str = "fashion-mnist") -> None:
        self.root = find_fashion_mnist(root)
        self.name = name
        self.classes = list(FASHION_MNIST_CLASSES)
        self.image_shape = (1, 28, 28)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, (img_stem, lbl_stem) in FILES.items():
            images = read_idx(_locate(self.root, img_stem))  # type: ignore[arg-type]
            labels = read_idx(_locate(self.root, lbl_stem))  # type: ignore[arg-type]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"Fashion-MNIST {split}: {images.shape} images vs {labels.shape} labels")
            self._arrays[split] = (images, labels)

    def describe(self) -> dict[str, Any]:
        return {"kind": "fashion_mnist", "uri": str(self.root)}

    def expected_total(self) -> int | None:
        return sum(len(y) for _, y in self._arrays.values())

    def samples(self) -> Iterator[Sample]:
        for split, (images, labels) in self._arrays.items():
            for i in range(len(labels)):
                yield Sample(split, f"{split}_{i:06d}", images[i][:, :, None], int(labels[i]), {"index": i})
