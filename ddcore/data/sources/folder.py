"""torchvision-style ImageFolder: one sub-folder per class, any PIL-readable images.

Layouts: ``root/<class>/*.png`` (optionally split by a fixed seed), or ``root/train/<class>/...``
plus ``root/test/<class>/...`` (or ``val``). Class order is the sorted folder names.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddcore.data.codec import HIGH_BIT_DEPTH_MODES, decode_png
from ddcore.data.image_files import LoadOptions, load_image_file
from ddcore.data.sources.base import Sample, require_dir, stratified_split
from ddcore.data.workers import in_workers
from ddcore.errors import DataError

log = logging.getLogger("ddflow.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFolderSource:
    """Images from class folders.

    Args:
        root: dataset folder.
        test_fraction: when there is no ``train``/``test`` layout, hold out this fraction per class.
        split_seed: seed of that hold-out (recorded in the artifact).
        channels: 1 or 3; ``None`` infers from the first image (greyscale -> 1, else 3).
        resize: ``(H, W)`` to resize every image to; ``None`` requires one common size.
        name: dataset name.
        allow_16bit: convert images of more than 8 bits per sample (:data:`HIGH_BIT_DEPTH_MODES`: 16-bit PNG,
            32-bit or float TIFF) to 8 bits, clipping values above 255; ``False`` refuses them.
        keep_jpeg: store a JPEG file's own bytes when it needs no conversion or resize (no re-encode, no
            generation loss); ``False`` re-encodes every image as PNG.
        workers: processes decoding images at once (:func:`ddcore.data.workers.in_workers`).

    Images in another mode than the artifact's (``L`` or ``RGB``), e.g. palette (``P``) or ``CMYK``, are converted;
    the ingest then logs one warning (logger ``ddflow.data``) with the count per mode.
    """

    def __init__(
        self,
        root: str,
        *,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        channels: int | None = None,
        resize: tuple[int, int] | None = None,
        name: str | None = None,
        allow_16bit: bool = False,
        keep_jpeg: bool = True,
        workers: int = 1,
    ) -> None:
        self.root = require_dir(root, "image folder")
        self.allow_16bit, self.keep_jpeg, self.workers = allow_16bit, keep_jpeg, workers
        self.name = name or self.root.name
        self.test_fraction, self.split_seed, self.resize = test_fraction, split_seed, resize
        split_dirs = {s: self.root / s for s in ("train", "test", "val") if (self.root / s).is_dir()}
        if "train" in split_dirs:
            self.layout = "split-folders"
            self.classes = _class_names(split_dirs["train"])
            self._files = {s: self._list(d, s) for s, d in split_dirs.items()}
        else:
            self.layout = "class-folders"
            self.classes = _class_names(self.root)
            files = self._list(self.root, "train")
            self._files = {"train": files}
            if test_fraction > 0:
                labels = np.asarray([lbl for _, lbl in files])
                mask = stratified_split(labels, fraction=test_fraction, seed=split_seed)
                self._files = {
                    "train": [f for f, m in zip(files, mask, strict=True) if not m],
                    "test": [f for f, m in zip(files, mask, strict=True) if m],
                }
        first = self._files["train"][0][0]
        img = decode_png(first.read_bytes(), channels=channels)
        h, w = resize if resize else img.shape[:2]
        self.image_shape = (channels or img.shape[2], int(h), int(w))

    def _list(self, folder: Path, split: str) -> list[tuple[Path, int]]:
        found = _class_names(folder)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise DataError(f"{split} split has class folder {unknown[0]!r} that train lacks; fix the layout")
        out: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            cdir = folder / cls
            if not cdir.is_dir():
                continue
            files = sorted(p for p in cdir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files and split == "train":
                raise DataError(f"class folder {cdir} has no images; add images or remove the folder")
            out.extend((p, label) for p in files)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "image_folder",
            "uri": str(self.root),
            "layout": self.layout,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "resize": list(self.resize) if self.resize else None,
            **({} if self.keep_jpeg else {"keep_jpeg": False}),
        }

    def expected_total(self) -> int | None:
        return sum(len(v) for v in self._files.values())

    def samples(self) -> Iterator[Sample]:
        c, h, w = self.image_shape
        converted: Counter[str] = Counter()
        jobs = []
        for split, files in self._files.items():
            counters = [0] * len(self.classes)
            for path, label in files:
                jobs.append((path, split, f"{split}_{label:05d}_{counters[label]:07d}", label))
                counters[label] += 1
        opts = LoadOptions((c, h, w), self.resize is not None, self.allow_16bit, self.keep_jpeg)
        step = 256 * self.workers if self.workers > 1 else max(len(jobs), 1)
        with in_workers(self.workers, chunksize=32) as pool:
            for start in range(0, len(jobs), step):  # in steps: decoded images in memory stay bounded
                part = jobs[start : start + step]
                for (path, split, key, label), (img, mode, encoded) in zip(
                        part, pool.map(load_image_file, [j[0] for j in part], [opts] * len(part)), strict=True):
                    if mode != ("L" if c == 1 else "RGB"):
                        converted[mode] += 1
                    yield Sample(split, key, img, label, {"file": str(path.relative_to(self.root))}, encoded=encoded)
        if converted:
            log.warning("%s", conversion_note(self.root, converted, "L" if c == 1 else "RGB",
                                              self.expected_total() or 0))


def conversion_note(root: Path, converted: Counter[str], target: str, total: int) -> str:
    """One line saying how many images of which modes were converted to ``target`` (clipped, for >8-bit ones)."""
    modes = ", ".join(f"{n} {mode}" + (" (clipped to 8 bits)" if mode in HIGH_BIT_DEPTH_MODES else "")
                      for mode, n in sorted(converted.items()))
    return (f"{root}: converted {sum(converted.values())} of {total} images to {target}: {modes}; convert them "
            "yourself before ingesting to control how")


def _class_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"no class sub-folders in {folder}; expected one folder per class")
    return names
