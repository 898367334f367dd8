"""Shared test setup: offline/quiet environment, markers, RNG hygiene, generated datasets."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (tests/test_gpu.py)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(min(2, os.cpu_count() or 1))

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Auto-skip ``gpu`` tests when CUDA is absent (CI never has it), unless ``DDFLOW_TEST_DEVICE=cpu`` asks to run
    them on the CPU (``benchmarks/gpu_check.sh --dry-run``)."""
    if torch.cuda.is_available() or os.environ.get("DDFLOW_TEST_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Tests must not leak global RNG state into each other."""
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.random.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


def band_sampler(per_class: int, seed: int):
    """Three classes of ``per_class`` structured 1x28x28 images (class = bright band position), mean 0.3, std 0.35."""
    from ddcore.sampling import TensorSampler

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * per_class, 1, 28, 28, generator=g) * 0.3
    y = torch.arange(3).repeat_interleave(per_class)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 4 + 8 * c : 8 + 8 * c] += 2.0
    return TensorSampler(x, y, 3, (0.3,), (0.35,))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip IDX file (the MNIST container format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def class_images(
    n_per_class: int, num_classes: int, *, shape: tuple[int, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generated images whose class is visible: class c brightens a band at a class-specific row."""
    rng = np.random.default_rng(seed)
    n = n_per_class * num_classes
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h = shape[0]
    for i, c in enumerate(y):
        r = int(c * (h - 3) / max(num_classes - 1, 1))
        x[i, r : r + 3] = 220
    perm = rng.permutation(n)
    return x[perm], y[perm]


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format folder (IDX gz) with 12 train / 4 test images per class."""
    root = tmp_path / "fmnist"
    root.mkdir()
    return write_fake_fmnist(root)


def write_fake_fmnist(root: Path) -> Path:
    """Write the four Fashion-MNIST IDX files (12 train / 4 test generated images per class) into ``root``."""
    xtr, ytr = class_images(12, 10, shape=(28, 28), seed=1)
    xte, yte = class_images(4, 10, shape=(28, 28), seed=2)
    write_idx(root / "train-images-idx3-ubyte.gz", xtr)
    write_idx(root / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(root / "t10k-images-idx3-ubyte.gz", xte)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", yte)
    return root


def leftovers(parent: Path, name: str) -> list[Path]:
    """Anything at ``parent/name`` or a temp sibling of it: must be empty after a failed write."""
    return [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp-")]
