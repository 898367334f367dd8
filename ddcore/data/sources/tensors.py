"""``.pt`` files: one dict of plain tensors, lists and strings (what ``ddflow export --format pt`` writes).

Read with ``torch.load(weights_only=True)`` only, so a file holding pickled objects is refused, never run.
Entries (N images, K classes):

* ``images`` (required): float ``[N, C, H, W]`` unnormalised pixels in ``[0, 1]``, or uint8; C = 1 or 3;
* ``labels`` (required): int ``[N]`` class indices, or float ``[N, K]`` soft labels (hard label = argmax);
* optional: ``soft_labels`` float ``[N, K]``, ``weights`` float ``[N]`` (NaN rows/values = none),
  ``keys`` and ``splits`` (``list[str]`` of length N; default ``train`` and generated keys),
  ``class_names`` (``list[str]``, default ``"0".."K-1"``), ``name`` (str). Other entries (``mean``, ``std``,
  ``digest``) are ignored: the artifact's normalisation is recomputed from the pixels.

Float pixels become uint8 as ``floor(x * 255 + 0.5)``, which recovers ``k / 255`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ddcore.config import StageConfig
from ddcore.data.sources.base import Sample
from ddcore.errors import DataError

PT_FILE = "dataset.pt"
FIX = "save a dict laid out as ddflow export --format pt writes it (README: Export)"


class PtSpec(StageConfig):
    """A ``.pt`` dict (``images`` float N x C x H x W in [0, 1] or uint8, ``labels`` int N or soft N x K; optional
    ``soft_labels``, ``weights``, ``keys``, ``splits``, ``class_names``, ``name``: the layout ``ddflow export --format
    pt`` writes), read with ``torch.load(weights_only=True)``, each entry checked.

    Attributes:
        kind: ``pt``.
        path: the ``.pt`` file, or a folder holding ``dataset.pt`` (``ddflow export --format pt``).
        name: dataset name; ``null``: the file's ``name`` entry, else the file (or folder) name.
    """

    kind: Literal["pt"] = "pt"
    path: str
    name: str | None = None


class PtSource:
    """Samples from a ``.pt`` file (or a folder holding ``dataset.pt``).

    Args:
        path: the ``.pt`` file, or a folder with ``dataset.pt``.
        name: dataset name (default: the file's ``name`` entry, else the file or folder name).
    """

    def __init__(self, path: str, *, name: str | None = None) -> None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / PT_FILE
        if not p.is_file():
            raise DataError(f".pt file not found: {p}; check the path")
        self.path = p
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable or pickled-object file
            raise DataError(f"{p} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}); "
                            "save a dict of tensors, lists and strings with torch.save") from None
        if not isinstance(obj, dict) or "images" not in obj or "labels" not in obj:
            found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{p} must hold a dict with 'images' and 'labels' (found {found}); {FIX}")
        self._parse(obj)
        stem = p.parent.name if p.name == PT_FILE else p.stem
        self.name = name or (obj["name"] if isinstance(obj.get("name"), str) else stem)

    def _bad(self, entry: str, expected: str, value: Any) -> DataError:
        got = f"{str(value.dtype).removeprefix('torch.')} {list(value.shape)}" if isinstance(value, torch.Tensor) \
            else type(value).__name__
        return DataError(f"{self.path} '{entry}': expected {expected}, got {got}; {FIX}")

    def _parse(self, obj: dict[str, Any]) -> None:
        x = obj["images"]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3) \
                or not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise self._bad("images", "float [N, C, H, W] in [0, 1] or uint8, C = 1 or 3", x)
        n = x.shape[0]
        if x.is_floating_point() and n:
            lo, hi = float(x.min()), float(x.max())
            if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
                raise DataError(f"{self.path} 'images': float pixels must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                                "map normalised images back to pixels (x * std + mean) before saving")
        y = obj["labels"]
        soft = obj.get("soft_labels")
        if isinstance(y, torch.Tensor) and y.is_floating_point() and y.ndim == 2 and y.shape[0] == n:
            soft = y if soft is None else soft
            y = y.argmax(1)
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != n or y.is_floating_point() \
                or y.dtype == torch.bool or (n and int(y.min()) < 0):
            raise self._bad("labels", f"int64 [{n}] class indices >= 0 or float [{n}, K] soft labels", y)
        names = obj.get("class_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(v, str) for v in names)):
            raise self._bad("class_names", "a list of strings", names)
        if soft is not None and (not isinstance(soft, torch.Tensor) or not soft.is_floating_point()
                                 or soft.ndim != 2 or soft.shape[0] != n
                                 or (names is not None and soft.shape[1] != len(names))):
            raise self._bad("soft_labels", f"float [{n}, K] with K = {len(names) if names else 'classes'}", soft)
        k = len(names) if names is not None else soft.shape[1] if soft is not None else int(y.max()) + 1 if n else 0
        if n and int(y.max()) >= k:
            raise self._bad("labels", f"class indices below {k} (the number of classes)", y)
        weights = obj.get("weights")
        if weights is not None and (not isinstance(weights, torch.Tensor) or not weights.is_floating_point()
                                    or weights.shape != (n,)):
            raise self._bad("weights", f"float [{n}]", weights)
        for entry in ("keys", "splits"):
            v = obj.get(entry)
            if v is not None and (not isinstance(v, list) or len(v) != n or not all(isinstance(s, str) for s in v)):
                raise self._bad(entry, f"a list of {n} strings", v)
        self.classes = list(names) if names is not None else [str(i) for i in range(k)]
        self.image_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self._x, self._y = x, y.to(torch.int64).numpy()
        self._soft = None if soft is None else soft.to(torch.float32).numpy()
        self._w = None if weights is None else weights.to(torch.float64).numpy()
        self._keys, self._splits = obj.get("keys"), obj.get("splits") or ["train"] * n

    def describe(self) -> dict[str, Any]:
        return {"kind": "pt", "uri": str(self.path)}

    def expected_total(self) -> int | None:
        return len(self._y)

    def samples(self) -> Iterator[Sample]:
        counters: dict[str, int] = {}
        for i in range(len(self._y)):
            split = self._splits[i]
            j = counters[split] = counters.get(split, -1) + 1
            key = self._keys[i] if self._keys is not None else f"{split}_{j:07d}"
            img = self._x[i]
            if img.is_floating_point():
                img = (img.to(torch.float32) * 255.0 + 0.5).to(torch.uint8)
            w = None if self._w is None or np.isnan(self._w[i]) else float(self._w[i])
            soft = None if self._soft is None or np.isnan(self._soft[i]).any() else self._soft[i]
            yield Sample(split, key, img.permute(1, 2, 0).contiguous().numpy(), int(self._y[i]), {"index": i},
                         weight=w, soft=soft)
