"""Exporting a dataset artifact to formats other tools read (``ddflow export``).

Formats (``out`` is a local folder; it is written as a temporary sibling and renamed into place):

* ``png``: one split (``train`` unless ``split`` says otherwise) for viewing:
  ``out/<class folder>/<index>.png``, index zero-padded (6 digits or more) in stored order within the class.
* ``imagefolder``: every split (or ``split``), torchvision ``ImageFolder`` layout that ``ddflow ingest out``
  reads back: ``out/<split>/<class folder>/<index>.png``.
* ``pt``: ``out/dataset.pt``, one dict of plain tensors, lists and strings (``torch.load(..., weights_only=True)``):
  ``images`` float32 ``[N, C, H, W]`` unnormalised pixels in ``[0, 1]``, ``labels`` int64 ``[N]``, ``keys`` and
  ``splits`` (``list[str]``, one per image), ``class_names``, ``mean``, ``std`` (``list[float]``, the artifact's
  normalisation), ``name``, ``digest`` (the source artifact's); ``weights`` float32 ``[N]`` and ``soft_labels``
  float32 ``[N, K]`` when the artifact has them (NaN where a sample has none).
* ``hf``: a Hugging Face ``datasets.DatasetDict`` written with ``save_to_disk`` (one sub-folder of Arrow files per
  split, ``load_from_disk(out)``): columns ``image`` (``Image``, PNG bytes), ``label`` (``ClassLabel(names=classes)``),
  ``key`` (string), plus ``weight`` (float32) and ``soft_label`` (list of float32) when present. Needs the
  optional ``datasets`` package (``pip install datasets``, the ``hf`` extra).

Class folders are the class names when every name is a safe folder name and the names sort in label order (the
order ``ImageFolder`` readers assign labels in); otherwise every folder is ``<label, zero-padded>_<name>`` with
unsafe characters replaced by ``_``, so labels survive the round trip. ``png`` and ``imagefolder`` cannot carry
per-image weights or soft labels: when the set has them they go to ``out/labels.json``.

Images of a ``png``-storage artifact are copied byte for byte; a float (``npy``) artifact gives 8-bit PNGs equal
to its stored previews (``pt`` keeps the float pixels, clipped to ``[0, 1]``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from ddcore.data import codec
from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact
from ddcore.data.storage import disk_errors
from ddcore.errors import ConfigError, ExportError

FORMATS = ("png", "imagefolder", "pt", "hf")
PT_FILE = "dataset.pt"
LABELS_FILE = "labels.json"
CHUNK = 1024
_UNSAFE = re.compile(r"[^\w.\- ]+")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_artifact` wrote.

    Attributes:
        out: the published folder.
        fmt: the format.
        counts: images written per split.
        notes: facts worth telling the user (dropped or quantised information, where extras went).
    """

    out: Path
    fmt: str
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else one :class:`ConfigError` line."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; choose png, imagefolder, pt or hf")
    return fmt


def class_folders(classes: list[str]) -> list[str]:
    """Folder name per class (index = label), chosen so that sorting the names gives label order.

    The class names themselves when they are safe, unique and already sorted; else ``f"{label:0{d}d}_{safe}"``.
    """
    safe = [_UNSAFE.sub("_", c).strip(" ").lstrip(".") or "class" for c in classes]
    if safe == list(classes) and len(set(safe)) == len(safe) and sorted(safe) == safe:
        return safe
    width = len(str(max(len(classes) - 1, 0)))
    return [f"{i:0{width}d}_{s}" for i, s in enumerate(safe)]


def export_artifact(artifact: str | Path, fmt: str, out: str | Path, *, split: str | None = None,
                    overwrite: bool = False) -> ExportResult:
    """Export the dataset artifact at ``artifact`` as ``fmt`` into the local folder ``out`` (atomic).

    Args:
        artifact: artifact folder or URL (verified quickly on open).
        fmt: one of :data:`FORMATS` (layouts in the module docstring).
        out: folder to create; it must not exist or be empty unless ``overwrite`` (then it is replaced).
        split: export only this split (``png``: default the first split of the manifest, ``train`` when there is
            one; other formats: default every split).

    Raises:
        ConfigError: unknown format. ArtifactError: missing/corrupt artifact or unknown split.
        ExportError: ``out`` in the way, or ``hf`` without the ``datasets`` package.
    """
    check_format(fmt)
    if fsio.is_url(out):
        raise ExportError(f"--out {out}: exports are written to a local folder; pass a local path and copy it "
                          "to the store afterwards")
    if fmt == "hf":
        _import_datasets()
    art = DatasetArtifact.open(artifact)
    if split is not None:
        art.rows(split)  # unknown split: one ArtifactError line
        splits = [split]
    else:
        splits = list(dict.fromkeys(art.splits.tolist()))  # manifest order: train, val, test, others
        splits = splits[:1] if fmt == "png" else splits
    final = Path(out).expanduser().absolute()
    if fsio.local_overlap(artifact, final):
        raise ExportError(f"--out {out} overlaps the artifact being exported ({artifact}); choose an --out outside it")
    if final.exists() and not (final.is_dir() and not any(final.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} exists and is not an empty folder; pass --overwrite to replace it or "
                          "choose another --out")
    fs = LocalFileSystem()
    tmp = Path(fsio.temp_sibling(fs, str(final)))
    tmp.mkdir()
    try:
        with disk_errors(str(final)):  # a full disk: the data-no-space line
            notes = _WRITERS[fmt](art, splits, tmp)
            fsio.publish(fs, str(tmp), str(final), marker="")
    except BaseException:
        fsio.remove_quietly(fs, str(tmp))
        raise
    if art.meta.storage == "npy" and fmt != "pt":
        notes.append("the artifact stores float images: the PNGs hold them quantised to 8 bits (its previews)")
    counts = {s: len(art.rows(s)) for s in splits}
    return ExportResult(out=final, fmt=fmt, counts=counts, notes=notes)


# -- reading -------------------------------------------------------------------------------------
def pixels01(art: DatasetArtifact, rows: np.ndarray) -> torch.Tensor:
    """Unnormalised float32 ``[n, C, H, W]`` pixels in ``[0, 1]`` of manifest ``rows``.

    ``png`` storage: ``uint8 / 255`` (exact). ``npy`` storage: ``clip(x * std + mean, 0, 1)``, computed as the
    writer computes its previews, so ``floor(p * 255 + 0.5)`` gives the stored preview PNG's pixels.
    """
    arr = art.read_arrays(rows)
    if art.meta.storage == "npy":
        return torch.from_numpy(_unnormalise(arr, art))
    return torch.from_numpy(np.require(arr, requirements="W")).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def _unnormalise(arr: np.ndarray, art: DatasetArtifact) -> np.ndarray:
    m = np.asarray(art.meta.mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(art.meta.std, np.float32).reshape(1, -1, 1, 1)
    return np.clip(arr * s + m, 0.0, 1.0)


def png_payloads(art: DatasetArtifact, rows: np.ndarray) -> Iterator[bytes]:
    """PNG bytes of ``rows`` in order, ``CHUNK`` rows read at a time: the stored bytes (``png`` storage) or the
    8-bit preview of each float image (``npy`` storage, identical to the preview member the writer stores)."""
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        if art.meta.storage != "npy":
            yield from art.read_raw(chunk)
            continue
        pix = _unnormalise(art.read_arrays(chunk), art)
        for p in pix:
            yield codec.encode_png((p.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8))


def _extras(art: DatasetArtifact, split: str) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """Weights float64 ``[n]`` (NaN = none) and soft labels float32 ``[n, K]`` of ``split``, or ``None``."""
    rows = art.rows(split)
    weights = None if art.weights is None else art.weights[rows]
    if weights is not None and np.isnan(weights).all():
        weights = None
    return weights, art.soft_labels(split)


# -- writers (each fills the temporary folder and returns notes) ---------------------------------
def _write_png(art: DatasetArtifact, splits: list[str], tmp: Path) -> list[str]:
    return _write_class_tree(art, splits, tmp, per_split_folder=False)


def _write_imagefolder(art: DatasetArtifact, splits: list[str], tmp: Path) -> list[str]:
    return _write_class_tree(art, splits, tmp, per_split_folder=True)


def _write_class_tree(art: DatasetArtifact, splits: list[str], tmp: Path, *, per_split_folder: bool) -> list[str]:
    """``tmp[/<split>]/<class folder>/<index>.png`` for each split; ``labels.json`` when weights/soft labels exist."""
    folders = class_folders(art.meta.classes)
    records: list[dict[str, Any]] = []
    has_extras = False
    for split in splits:
        base = tmp / split if per_split_folder else tmp
        for f in folders:
            (base / f).mkdir(parents=True, exist_ok=True)
        rows = art.rows(split)
        labels = art.labels[rows]
        width = max(6, len(str(max(int(np.bincount(labels).max()) - 1, 0)))) if len(rows) else 6
        weights, soft = _extras(art, split)
        has_extras |= weights is not None or soft is not None
        counters = [0] * art.meta.num_classes
        for i, (payload, label) in enumerate(zip(png_payloads(art, rows), labels.tolist(), strict=True)):
            rel = f"{folders[label]}/{counters[label]:0{width}d}.png"
            counters[label] += 1
            (base / rel).write_bytes(payload)
            rec: dict[str, Any] = {"file": f"{split}/{rel}" if per_split_folder else rel,
                                   "key": art.keys[rows[i]], "label": label}
            if weights is not None and not np.isnan(weights[i]):
                rec["weight"] = float(weights[i])
            if soft is not None:
                rec["soft_label"] = [float(v) for v in soft[i].tolist()]
            records.append(rec)
    if not has_extras:
        return []
    doc = {"classes": art.meta.classes, "folders": folders, "digest": art.digest, "samples": records}
    (tmp / LABELS_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return [f"per-image weights/soft labels are in {LABELS_FILE} (image-folder readers ignore them)"]


def _write_pt(art: DatasetArtifact, splits: list[str], tmp: Path) -> list[str]:
    """``tmp/dataset.pt``: the dict described in the module docstring (all ``splits``, manifest order)."""
    images, labels, keys, names, weights, softs = [], [], [], [], [], []
    any_w = any_s = False
    k = art.meta.num_classes
    for split in splits:
        rows = art.rows(split)
        images.extend(pixels01(art, rows[i : i + CHUNK]) for i in range(0, len(rows), CHUNK))
        labels.append(torch.from_numpy(art.labels[rows].copy()))
        keys.extend(art.keys[r] for r in rows)
        names.extend([split] * len(rows))
        w, s = _extras(art, split)
        any_w, any_s = any_w or w is not None, any_s or s is not None
        weights.append(torch.full((len(rows),), float("nan")) if w is None else torch.from_numpy(w).float())
        softs.append(torch.full((len(rows), k), float("nan")) if s is None else s.float())
    c, h, w_ = art.meta.image_shape
    data: dict[str, Any] = {
        "images": torch.cat(images) if images else torch.empty(0, c, h, w_),
        "labels": torch.cat(labels).to(torch.int64),
        "keys": keys,
        "splits": names,
        "class_names": list(art.meta.classes),
        "mean": [float(v) for v in art.meta.mean],
        "std": [float(v) for v in art.meta.std],
        "name": art.meta.name,
        "digest": art.digest,
    }
    if any_w:
        data["weights"] = torch.cat(weights)
    if any_s:
        data["soft_labels"] = torch.cat(softs)
    torch.save(data, tmp / PT_FILE)
    return []


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ExportError("--format hf needs the 'datasets' package; install it with pip install datasets (the "
                          "'hf' extra of ddflow)") from None
    return datasets


def _write_hf(art: DatasetArtifact, splits: list[str], tmp: Path) -> list[str]:
    """``DatasetDict({split: Dataset}).save_to_disk(tmp)`` with the columns of the module docstring."""
    ds = _import_datasets()
    description = json.dumps({"exported_by": "ddflow", "name": art.meta.name, "digest": art.digest,
                              "mean": art.meta.mean, "std": art.meta.std})
    parts = {}
    for split in splits:
        rows = art.rows(split)
        feats: dict[str, Any] = {"image": ds.Image(), "label": ds.ClassLabel(names=list(art.meta.classes)),
                                 "key": ds.Value("string")}
        cols: dict[str, list[Any]] = {
            "image": [{"bytes": b, "path": None} for b in png_payloads(art, rows)],
            "label": art.labels[rows].tolist(),
            "key": [art.keys[r] for r in rows],
        }
        weights, soft = _extras(art, split)
        if weights is not None:
            feats["weight"] = ds.Value("float32")
            cols["weight"] = [None if np.isnan(v) else float(v) for v in weights.tolist()]
        if soft is not None:
            feats["soft_label"] = ds.List(ds.Value("float32"))
            cols["soft_label"] = soft.tolist()
        info = ds.DatasetInfo(description=description, features=ds.Features(feats))
        parts[split] = ds.Dataset.from_dict(cols, features=ds.Features(feats), info=info, split=split)
    was_disabled = ds.utils.are_progress_bars_disabled()
    ds.utils.disable_progress_bars()
    try:
        ds.DatasetDict(parts).save_to_disk(str(tmp))
    finally:
        if not was_disabled:
            ds.utils.enable_progress_bars()
    return []


_WRITERS: dict[str, Callable[[DatasetArtifact, list[str], Path], list[str]]] = {
    "png": _write_png, "imagefolder": _write_imagefolder, "pt": _write_pt, "hf": _write_hf,
}
