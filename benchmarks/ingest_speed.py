"""Ingest throughput on Fashion-MNIST (70k images): images/s for ingest, verify and full decode.

Prints a table and writes ``benchmarks/results/ingest_speed.json``.
Usage: ``python benchmarks/ingest_speed.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import write_json
from ddcore.data import IngestConfig, ingest, open_artifact


def measure(repeats: int) -> dict:
    cfg = IngestConfig.from_mapping({"source": {"kind": "fashion_mnist"}})
    rows = []
    digests = set()
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "fm"
            t0 = time.perf_counter()
            meta = ingest(cfg, out)
            t_ingest = time.perf_counter() - t0
            n = sum(v["total"] for v in meta.counts.values())
            t0 = time.perf_counter()
            art = open_artifact(out, verify="full")
            t_verify = time.perf_counter() - t0
            t0 = time.perf_counter()
            x, _ = art.load_split("train")
            t_load = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in out.iterdir())
            digests.add(meta.digest)
            rows.append({"run": i, "images": n, "ingest_s": t_ingest, "ingest_img_per_s": n / t_ingest,
                         "verify_full_s": t_verify, "load_train_s": t_load,
                         "load_img_per_s": x.shape[0] / t_load, "bytes": size})
    return {"benchmark": "ingest_speed", "dataset": "fashion-mnist", "machine": platform.machine(),
            "cpus": torch.get_num_threads(), "runs": rows, "digests_identical": len(digests) == 1,
            "digest": sorted(digests)[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/ingest_speed.json")
    args = ap.parse_args()
    res = measure(args.repeats)
    head = ("run", "images", "ingest s", "img/s", "verify s", "load s", "load img/s", "MB")
    print(" ".join(f"{h:>10}" for h in head))
    for r in res["runs"]:
        vals = (r["run"], r["images"], f"{r['ingest_s']:.2f}", f"{r['ingest_img_per_s']:.0f}",
                f"{r['verify_full_s']:.2f}", f"{r['load_train_s']:.2f}", f"{r['load_img_per_s']:.0f}",
                f"{r['bytes'] / 1e6:.1f}")
        print(" ".join(f"{v:>10}" for v in vals))
    print(f"digest {res['digest']}  identical across runs: {res['digests_identical']}")
    write_json(args.out, res)


if __name__ == "__main__":
    main()
