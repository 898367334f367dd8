"""Ingest of ImageNet-shaped JPEG data (benchmarks/imagenet_like.py): images/s of each way in, with 1 and 2 workers.

Ways in: WebDataset shards indexed in place (``layout: in_place``), indexed and copied (``copy``), re-encoded to
ddflow's PNG shards (``reencode``), and an ImageFolder of JPEGs kept as they are (``keep_jpeg: true``, the
default) or re-encoded as PNG. Each is run ``--repeats`` times; the table shows the best run (the least disturbed
by other load) and the machine load beside it. Every run of one way must give the same digest.

Prints a table and writes ``benchmarks/results/ingest_scale.json``. Usage:
``python -m benchmarks.ingest_scale [--classes 100 --per-class 200 --size 64] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import write_json
from benchmarks.imagenet_like import generate


def ways(root: Path, n_shards: int) -> dict[str, dict]:
    """The ingest source of each way in, over the generated data at ``root``."""
    urls = {"train": str(root / "shards" / f"imagenet1k-train-{{000000..{n_shards - 1:06d}}}.tar")}
    shards = {"kind": "webdataset", "urls": urls}
    folder = {"kind": "image_folder", "root": str(root / "train")}
    return {"shards in_place": {**shards, "layout": "in_place"}, "shards copy": {**shards, "layout": "copy"},
            "shards reencode": {**shards, "layout": "reencode"}, "folder keep_jpeg": folder,
            "folder png": {**folder, "keep_jpeg": False}}


def measure(root: Path, n_shards: int, *, repeats: int, workers: tuple[int, ...], skip: set[str]) -> list[dict]:
    # imported here, not at the top: worker processes start by importing this module (spawn), and should not
    # pay for torch, which the ingest path of the main process imports
    from ddcore.data import IngestConfig, ingest

    rows = []
    for way, source in ways(root, n_shards).items():
        if way in skip:
            continue
        for w in (workers if way != "shards reencode" else (1,)):  # the re-encoding shard reader is serial
            runs, digests = [], set()
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as d:
                    load = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    meta = ingest(IngestConfig.from_mapping({"source": source, "workers": w}), Path(d) / "a")
                    seconds = time.perf_counter() - t0
                    size = sum(p.stat().st_size for p in (Path(d) / "a").rglob("*") if p.is_file())
                runs.append({"seconds": seconds, "load_before": load, "artifact_bytes": size})
                digests.add(meta.digest)
            n = meta.counts["train"]["total"]
            best = min(runs, key=lambda r: r["seconds"])
            rows.append({"way": way, "workers": w, "images": n, "img_per_s": n / best["seconds"], **best,
                         "runs": runs, "storage": meta.storage, "same_digest": len(digests) == 1})
            print(f"{way:<18} {w:>2} workers  {n / best['seconds']:>8.0f} img/s  ({best['seconds']:.2f} s, "
                  f"load {best['load_before']:.1f}, artifact {best['artifact_bytes'] / 1e6:.1f} MB)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--skip", default="", help="comma-separated ways to leave out")
    ap.add_argument("--data", default=None, help="generated data to reuse (else generated into a temp dir)")
    ap.add_argument("--out", default="benchmarks/results/ingest_scale.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        root = Path(a.data) if a.data else tmp / "data"
        if not (root / "generator.json").exists():
            generate(root, classes=a.classes, per_class=a.per_class, val_per_class=0, size=a.size,
                     shard_size=a.shard_size)
        info = json.loads((root / "generator.json").read_text())
        n_shards = info["splits"]["train"]["shards"]
        rows = measure(root, n_shards, repeats=a.repeats, workers=tuple(int(w) for w in a.workers.split(",")),
                       skip=set(filter(None, a.skip.split(","))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"benchmark": "ingest_scale", "data": {k: info[k] for k in ("classes", "per_class", "size", "shard_size")},
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}
    write_json(a.out, out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
