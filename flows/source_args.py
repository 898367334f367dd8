"""Turning the ``ddflow ingest SOURCE`` argument into a typed source spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddcore.data.sources.idx import FILES
from ddcore.errors import DataError


def source_from_argument(source: str, *, name: str | None, test_fraction: float, split_seed: int,
                         resize: str | None, channels: int | None, test_url: str | None,
                         allow_16bit: bool = False, layout: str = "reencode") -> dict[str, Any]:
    """Guess the source kind from SOURCE and return the mapping for ``IngestConfig.source``.

    * ``fashion-mnist`` (or ``fashion_mnist``): the IDX files from their default locations;
    * a folder with the Fashion-MNIST IDX files, CIFAR python batches, or class sub-folders;
    * a ``.npz`` file; a ``.pt`` file or a folder with ``dataset.pt`` (``ddflow export --format pt``);
    * a Hugging Face ``save_to_disk`` folder (``dataset_dict.json`` or ``state.json``; ``ddflow export --format hf``);
    * a WebDataset URL or brace pattern ending in ``.tar`` (``pipe:...`` and fsspec URLs too); ``layout`` says
      whether its shards are re-encoded, indexed in place or copied (only shard sources take one).
    """
    spec: dict[str, Any]
    if source.lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        spec = {"kind": "fashion_mnist"}
    elif source.endswith(".tar") or source.endswith("}") or source.startswith("pipe:") or "://" in source:
        urls = {"train": source}
        if test_url:
            urls["test"] = test_url
        spec = {"kind": "webdataset", "urls": urls, "layout": layout}
    elif source.endswith(".npz"):
        spec = {"kind": "npz", "path": source, "test_fraction": test_fraction, "split_seed": split_seed}
    else:
        p = Path(source).expanduser()
        if not p.exists():
            raise DataError(f"source not found: {source}; pass a folder, a .npz file, a shard URL or 'fashion-mnist'")
        names = {c.name for c in p.iterdir()} if p.is_dir() else set()
        if p.is_file() and p.suffix == ".pt":
            spec = {"kind": "pt", "path": str(p)}
        elif "dataset.pt" in names:
            spec = {"kind": "pt", "path": str(p / "dataset.pt")}
        elif "dataset_dict.json" in names or {"state.json", "dataset_info.json"} <= names:
            spec = {"kind": "hf_disk", "root": str(p)}
        elif any(stem in names or stem + ".gz" in names for stem in FILES["train"]):
            spec = {"kind": "fashion_mnist", "root": str(p)}
        elif "data_batch_1" in names or ("train" in names and (p / "train").is_file()):
            spec = {"kind": "cifar", "root": str(p)}
        elif p.is_dir():
            spec = {"kind": "image_folder", "root": str(p), "test_fraction": test_fraction, "split_seed": split_seed}
            if channels:
                spec["channels"] = channels
            if allow_16bit:
                spec["allow_16bit"] = True
            if resize:
                try:
                    h, w = (int(v) for v in resize.lower().split("x"))
                except ValueError:
                    raise DataError(f"--resize {resize!r} must look like 32x32 (HxW)") from None
                spec["resize"] = [h, w]
        else:
            raise DataError(f"cannot tell what kind of source {source} is; pass a folder, a .npz file, a .tar shard "
                            "URL or 'fashion-mnist' (or set data.source.kind in a run config)")
    if layout != "reencode" and spec["kind"] != "webdataset":
        raise DataError(f"--layout {layout} indexes WebDataset shards, but {source} is a {spec['kind']} source; "
                        "drop --layout, or pass a shard URL or brace pattern ending in .tar")
    if name:
        spec["name"] = name
    return spec
