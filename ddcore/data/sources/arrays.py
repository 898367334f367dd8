"""Array sources: NumPy ``.npz`` files and CIFAR-10/100 python batches.

CIFAR batches are the one pickled format we read. They are parsed with a restricted unpickler
that resolves only the numpy names an ndarray needs; anything else (functions, classes, modules) is
refused, so a tampered batch cannot run code. We still assume the files come from the official
CIFAR tarball: the restriction stops code execution, not wrong data.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddcore.data.sources.base import Sample, require_dir, stratified_split
from ddcore.errors import DataError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 protocol-2 pickles store ndarray bytes as latin-1 text re-encoded through this
    # function; it only turns a str into bytes.
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"refused to unpickle {module}.{name}: CIFAR batches may only hold numpy arrays")


def restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy array reconstruction."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle
        raise DataError(f"malformed CIFAR batch ({type(exc).__name__}: {exc})") from None


def _dict_get(d: dict, *names: str) -> Any:
    for n in names:
        for k in (n, n.encode()):
            if k in d:
                return d[k]
    raise DataError(f"CIFAR batch lacks any of the keys {names}")


class ArraySource:
    """In-memory arrays split into train/test; base of the npz and CIFAR sources."""

    def __init__(self, name: str, classes: list[str], splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 description: dict[str, Any]) -> None:
        self.name, self.classes, self._splits, self._desc = name, classes, splits, description
        first = next(iter(splits.values()))[0]
        self.image_shape = (first.shape[3], first.shape[1], first.shape[2])

    def describe(self) -> dict[str, Any]:
        return self._desc

    def expected_total(self) -> int | None:
        return sum(len(y) for _, y in self._splits.values())

    def samples(self) -> Iterator[Sample]:
        for split, (x, y) in self._splits.items():
            for i in range(len(y)):
                yield Sample(split, f"{split}_{i:07d}", x[i], int(y[i]), {"index": i})


def _as_nhwc_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4:
        raise DataError(f"{what}: images must be [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if x.shape[3] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.min() >= 0.0 and x.max() <= 1.0:
            x = (x * 255.0 + 0.5).astype(np.uint8)
        else:
            raise DataError(f"{what}: images must be uint8 (or floats in [0, 1]), got {x.dtype}")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64 ``[N]``: integer arrays, or floats holding whole numbers; refused otherwise."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise DataError(f"{what}: labels must be integers, got dtype {y.dtype}; store class indices")
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        bad = y[~np.isfinite(y) | (y != np.round(y))][0]
        raise DataError(f"{what}: labels must be whole class indices, got {bad}; store integer labels")
    if y.size and (y.min() < 0 or y.max() >= 2**31):
        raise DataError(f"{what}: label {int(y.min() if y.min() < 0 else y.max())} is out of range "
                        "[0, 2^31); labels are class indices 0..K-1")
    return y.astype(np.int64)


def npz_source(path: str, *, test_fraction: float = 0.0, split_seed: int = 0,
               name: str | None = None, classes: list[str] | None = None) -> ArraySource:
    """``.npz`` with ``x``/``y`` (and optionally ``x_test``/``y_test``); no pickled objects allowed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"npz file not found: {p}; check the path")
    if not zipfile.is_zipfile(p):
        raise DataError(f"{p} is not a readable .npz file (not a zip archive); save it with numpy.savez")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(f"{p}: cannot read without pickle ({exc}); save plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{p} is not a readable .npz file ({type(exc).__name__}); save it with numpy.savez") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{p} must contain arrays 'x' and 'y' (found {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{p} has only one of 'x_test' and 'y_test'; store both or neither")
    x, y = _as_nhwc_uint8(arrays["x"], str(p)), _labels(arrays["y"], f"{p} 'y'")
    if len(x) != len(y):
        raise DataError(f"{p}: {len(x)} images but {len(y)} labels")
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "x_test" in arrays:
        xt, yt = _as_nhwc_uint8(arrays["x_test"], str(p)), _labels(arrays["y_test"], f"{p} 'y_test'")
        if len(xt) != len(yt):
            raise DataError(f"{p}: {len(xt)} test images but {len(yt)} test labels; store one label per image")
        splits = {"train": (x, y), "test": (xt, yt)}
    elif test_fraction > 0:
        mask = stratified_split(y, fraction=test_fraction, seed=split_seed)
        splits = {"train": (x[~mask], y[~mask]), "test": (x[mask], y[mask])}
    else:
        splits = {"train": (x, y)}
    n_cls = int(max(int(v[1].max()) for v in splits.values())) + 1 if len(y) else 0
    names = classes or [str(i) for i in range(n_cls)]
    desc = {"kind": "npz", "uri": str(p), "test_fraction": test_fraction, "split_seed": split_seed}
    return ArraySource(name or p.stem, names, splits, desc)


def _cifar_arrays(f: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch's ``data`` as uint8 ``[N, 3072]`` and its labels as int64 ``[N]``, or one error line naming the file."""
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32 or arr.dtype != np.uint8:
        raise DataError(f"CIFAR batch {f}: 'data' is {arr.dtype} of shape {tuple(arr.shape)}, expected uint8 "
                        "(N, 3072) (N images of 3x32x32 bytes); use the official python batches")
    try:
        y = np.asarray(labels).astype(np.int64, casting="same_kind").reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"CIFAR batch {f}: labels are not integer class indices; use the official python "
                        "batches") from None
    if len(y) != len(arr):
        raise DataError(f"CIFAR batch {f}: {len(arr)} images but {len(y)} labels; use the official python batches")
    return arr, y


def cifar_source(root: str, *, name: str | None = None) -> ArraySource:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) python batches."""
    folder = require_dir(root, "CIFAR")
    if (folder / "data_batch_1").is_file():
        variant, train_files, test_files = "cifar10", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_file, label_keys, name_keys = "batches.meta", ("labels",), ("label_names",)
    elif (folder / "train").is_file():
        variant, train_files, test_files = "cifar100", ["train"], ["test"]
        meta_file, label_keys, name_keys = "meta", ("fine_labels",), ("fine_label_names",)
    else:
        raise DataError(f"{folder} holds no CIFAR python batches (data_batch_1 or train); "
                        "extract cifar-10-python.tar.gz / cifar-100-python.tar.gz there")

    def load(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for fname in files:
            f = folder / fname
            if not f.is_file():
                raise DataError(f"missing CIFAR batch {f}; extract the complete archive")
            d = restricted_load(f.read_bytes())
            if not isinstance(d, dict):
                raise DataError(f"CIFAR batch {f} holds a {type(d).__name__}, not a dict of arrays; use the official "
                                "python batches")
            data, labels = _cifar_arrays(f, _dict_get(d, "data"), _dict_get(d, *label_keys))
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    splits = {"train": load(train_files), "test": load(test_files)}
    n_cls = 10 if variant == "cifar10" else 100
    classes = [str(i) for i in range(n_cls)]
    if (folder / meta_file).is_file():
        names = _dict_get(restricted_load((folder / meta_file).read_bytes()), *name_keys)
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ArraySource(name or variant, classes, splits, {"kind": "cifar", "uri": str(folder), "variant": variant})
