"""Hugging Face ``datasets`` folders written by ``save_to_disk`` (what ``ddflow export --format hf`` writes).

Read with pyarrow only (the ``datasets`` package is not needed): ``dataset_dict.json`` lists the splits, each split
folder has ``state.json`` (its Arrow files) and ``dataset_info.json`` (its features); a folder with ``state.json``
at the top is one ``train`` split. Columns: ``image`` (``Image`` feature with embedded bytes; images stored only as
paths are refused), ``label`` (class indices; a ``ClassLabel`` feature gives the class names), optional ``key``
(string, kept as the sample key), ``weight`` (float) and ``soft_label`` (list of float).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ddcore.config import StageConfig
from ddcore.data.codec import decode_png
from ddcore.data.sources.base import Sample, require_dir
from ddcore.errors import DataError

FIX = "write it with DatasetDict.save_to_disk or ddflow export --format hf"


class HFDiskSpec(StageConfig):
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (``ddflow export --format hf``), read with
    pyarrow: columns ``image`` (embedded bytes), ``label`` (``ClassLabel`` names become the classes), optional
    ``key``, ``weight``, ``soft_label``.

    Attributes:
        kind: ``hf_disk``.
        root: the folder (``dataset_dict.json`` with one sub-folder per split, or one split's ``state.json``).
        name: dataset name; ``null``: the folder's name.
    """

    kind: Literal["hf_disk"] = "hf_disk"
    root: str
    name: str | None = None


def _read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC file, stream format (what ``datasets`` writes) or file format."""
    with pa.memory_map(str(path)) as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            src.seek(0)
            return pa.ipc.open_file(src).read_all()


class HFDiskSource:
    """Samples of a ``save_to_disk`` folder (a ``DatasetDict``, or one ``Dataset`` read as split ``train``).

    Args:
        root: the folder.
        name: dataset name (default: the folder name).
    """

    def __init__(self, root: str, *, name: str | None = None) -> None:
        self.root = require_dir(root, "Hugging Face dataset")
        self.name = name or self.root.name
        self._tables: dict[str, pa.Table] = {}
        names: list[str] | None = None
        try:
            if (self.root / "dataset_dict.json").is_file():
                splits = json.loads((self.root / "dataset_dict.json").read_text())["splits"]
                folders = {str(s): self.root / str(s) for s in splits}
            elif (self.root / "state.json").is_file():
                folders = {"train": self.root}
            else:
                raise FileNotFoundError("no dataset_dict.json or state.json")
            for split, folder in folders.items():
                state = json.loads((folder / "state.json").read_text())
                parts = [_read_arrow(folder / f["filename"]) for f in state["_data_files"]]
                self._tables[split] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
                info = json.loads((folder / "dataset_info.json").read_text())
                label = (info.get("features") or {}).get("label") or {}
                if names is None and label.get("_type") == "ClassLabel" and label.get("names"):
                    names = [str(n) for n in label["names"]]
        except (OSError, KeyError, TypeError, ValueError, IndexError, pa.ArrowException) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DataError(f"{self.root} is not a readable Hugging Face dataset folder ({why}); {FIX}") from None
        if not self._tables:
            raise DataError(f"{self.root} is not a readable Hugging Face dataset folder (no splits); {FIX}")
        for split, table in self._tables.items():
            if "image" not in table.column_names or "label" not in table.column_names:
                raise DataError(f"{self.root} split {split!r} needs columns 'image' and 'label' (found "
                                f"{table.column_names}); rename them or {FIX}")
        top = max((int(pc.max(t.column("label")).as_py() or 0) for t in self._tables.values()), default=0)
        self.classes = names or [str(i) for i in range(top + 1)]
        first_split, first = next((s, t) for s, t in self._tables.items() if t.num_rows)
        img = decode_png(self._image_bytes(first_split, first.column("image")[0].as_py(), 0))
        self.image_shape = (img.shape[2], img.shape[0], img.shape[1])

    def _image_bytes(self, split: str, value: Any, i: int) -> bytes:
        data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
        if not data:
            raise DataError(f"{self.root} is not a readable Hugging Face dataset folder (split {split!r} row {i} has "
                            f"no embedded image bytes); {FIX}")
        return data

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf_disk", "uri": str(self.root)}

    def expected_total(self) -> int | None:
        return sum(t.num_rows for t in self._tables.values())

    def samples(self) -> Iterator[Sample]:
        c = self.image_shape[0]
        for split, table in self._tables.items():
            cols = {k: table.column(k).to_pylist() for k in ("label", "key", "weight", "soft_label")
                    if k in table.column_names}
            images = table.column("image")
            for i in range(table.num_rows):
                img = decode_png(self._image_bytes(split, images[i].as_py(), i), channels=c)
                key = cols["key"][i] if "key" in cols else f"{split}_{i:07d}"
                w = cols["weight"][i] if "weight" in cols else None
                soft = cols["soft_label"][i] if "soft_label" in cols else None
                if soft is not None and len(soft) != len(self.classes):
                    raise DataError(f"{self.root} is not a readable Hugging Face dataset folder (split {split!r} row "
                                    f"{i}: soft_label has {len(soft)} values for {len(self.classes)} classes); {FIX}")
                yield Sample(split, key, img, int(cols["label"][i]), {"index": i},
                             weight=None if w is None or np.isnan(w) else float(w),
                             soft=None if soft is None else np.asarray(soft, np.float32))
