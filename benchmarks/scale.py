"""Scale benchmark: the ``configs/imagenet1k.yaml`` shape on generated ImageNet-like data, at growing size.

Every point runs the whole ImageNet plan through the real CLI (``ddflow run``: Prefect, MLflow, the artifact
store): shards indexed in place, the pretrained soft-label teacher, a pretrained diffusers VAE, latent
encoding, NCFM fanned out into 8 class groups, DDOQ, D4M, random subsets, and evaluation of every set with
hard and soft labels on the streamed validation split. Only the budgets are cut (:data:`MICRO`: iterations,
epochs, rounds, IPCs, two network sizes) and the two pretrained models are stand-ins of the same format
(their weights are seeded random ones: no ImageNet model or VAE can be had on this machine, and this measures
cost, not accuracy). Points: classes {10, 100, 1000} x images per class {10, 50} at 64 px, plus 100 x 50 at 128 px; the
validation split has a fifth as many images per class (ImageNet has 1/25).

Each stage output's ``ref.json`` gives the stage's wall time (summed over its nodes), its peak RSS (the
process's high-water mark, reset at each stage start: :mod:`tasks.runtime.memory`; the largest over its
nodes) and the bytes it wrote. :func:`fit_exponents` fits ``log t = a + b log(images per class) +
c log(classes)`` over the 64-px points for each stage (``images`` = b, ``classes`` = c), beside the local
slopes between the two largest points (``classes_tail``: 100 -> 1000 classes at 50 per class;
``images_tail``: 10 -> 50 per class at 1000 classes) and ``pixels`` (64 -> 128 px at 100 x 50, per pixel).

    python -m benchmarks.scale --work /tmp/ddflow-scale          # every point (about an hour on 2 cores)
    python -m benchmarks.scale --work /tmp/ddflow-scale --points 10x10@64   # one point

Writes ``benchmarks/results/scale.json`` (``rows``, ``exponents``, ``runs``, the machine and its load) and
prints the table. docs/scale.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks import REPO, run_timed, write_json

BASE_CONFIG = REPO / "configs" / "imagenet1k.yaml"
OUT_JSON = REPO / "benchmarks" / "results" / "scale.json"
POINTS = ["10x10@64", "10x50@64", "100x10@64", "100x50@64", "1000x10@64", "1000x50@64", "100x50@128"]

MICRO: dict[str, Any] = {
    "ipcs": [1],
    "methods": {
        "ncfm": {"iterations": 4, "batch_real": 16, "width": 32, "checkpoint_every": 2,
                 "ncfm": {"num_freqs": 256, "factor": 2}},
    },
    "encode": {"batch_size": 128},
    "evaluation": {"network": "convnet-4", "width": 32, "epochs": 1, "num_eval": 1, "batch_size": 256,
                   "test_memory_mb": 32, "loader_workers": 2},
    "runner": {"kind": "threads"},
}
"""Budget cuts applied over ``configs/imagenet1k.yaml`` (everything else is the shape as shipped). One IPC: each
further IPC repeats distillation and evaluation (``--ipcs 1,2`` measures that). Two networks
are cut too: NCFM's ConvNet-5 runs at width 32 (width 128 costs 16x: 17 TFLOP per iteration at 1000 classes),
and evaluation trains a width-32 ConvNet-4 instead of ResNet-18-BN, which at 64 px takes the CIFAR stem (no
stride, no pool: 2.2 GFLOPs per image, a 5-minute test pass per round on 2 cores; at 128 px it takes the
ImageNet stem and costs 0.6). The projection (benchmarks/scale_projection.py) counts the shipped networks.
The evaluation's ``test_memory_mb`` is set low so that every validation split is streamed, as at ImageNet size."""

TEACHER = "mobilenet_v3_small"
"""The pretrained teacher's stand-in architecture (the shipped config names resnet18; a smaller model keeps
the online relabelling affordable on 2 cores, and the projection in docs/scale.md scales by FLOPs)."""


def parse_point(text: str) -> tuple[int, int, int]:
    """``"1000x50@64"`` -> ``(classes, images_per_class, size)``."""
    try:
        shape, size = text.split("@")
        classes, per_class = shape.split("x")
        return int(classes), int(per_class), int(size)
    except ValueError:
        raise SystemExit(f"bad point {text!r}: write CLASSESxIMAGES@SIZE, e.g. 1000x50@64") from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, nested mappings merged key by key (neither input is changed)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def shard_pattern(folder: Path, split: str) -> str:
    """The brace pattern of the generated ``imagenet1k-<split>-NNNNNN.tar`` shards in ``folder``."""
    n = len(list(folder.glob(f"imagenet1k-{split}-*.tar")))
    if n == 0:
        raise SystemExit(f"no imagenet1k-{split}-*.tar shards in {folder}")
    return str(folder / f"imagenet1k-{split}-{{000000..{n - 1:06d}}}.tar")


def make_assets(folder: Path, *, classes: int, size: int, seed: int = 0) -> tuple[str, str]:
    """A diffusers VAE folder (ddflow's default architecture) and a torchvision state dict of :data:`TEACHER`
    with ``classes`` outputs, both with seeded random weights; returns their paths."""
    import torch
    import torchvision

    from ddcore.latent.vae import VAEConfig, build_vae, save_vae

    torch.manual_seed(seed)
    vae_dir = folder / f"vae-{size}"
    if not (vae_dir / "config.json").exists():
        save_vae(build_vae(VAEConfig(), 3, size), vae_dir)
    weights = folder / f"{TEACHER}-{classes}.pth"
    if not weights.exists():
        model = torchvision.models.get_model(TEACHER, weights=None, num_classes=classes)
        tmp = weights.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(weights)
    return str(vae_dir), str(weights)


def point_config(*, name: str, shards: Path, vae: str, teacher: str) -> dict[str, Any]:
    """The run config of one point: the shipped ImageNet shape, :data:`MICRO` and the generated inputs."""
    base = yaml.safe_load(BASE_CONFIG.read_text())
    over = merge(MICRO, {
        "name": name,
        "data": {"source": {"kind": "webdataset", "layout": "in_place", "name": "imagenet-like",
                            "urls": {"train": shard_pattern(shards, "train"), "test": shard_pattern(shards, "val")}}},
        "vae": {"source": "pretrained", "pretrained_path": vae},
        "soft_labels": {"teacher": {"pretrained": {"architecture": TEACHER, "weights": teacher,
                                                   "input_size": None}}},
    })
    cfg = merge(base, over)
    cfg["data"]["source"] = over["data"]["source"]  # replaces the shipped image_folder source whole
    return cfg


def stage_rows(root: Path) -> dict[str, dict[str, float]]:
    """Per stage name (``distill:<method>`` for the distill stage): summed ``seconds``, largest ``peak_rss_mb``,
    summed ``bytes`` and ``nodes``, from every stage output (``root/<stage>/<key>/ref.json``) under the artifact
    ``root`` (a fresh root per point, so every output was computed here)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted(root.glob("*/*/ref.json")):
        rec = json.loads(path.read_text())
        if Path(rec["ref"]["uri"]).resolve() != path.parent.resolve():
            continue  # a copy (MLflow's artifact store keeps one per run), not a stage output
        name = rec["ref"]["stage"]
        if name == "distill":  # one row per method: their costs grow along different axes
            cfg = rec.get("config") or {}
            name = f"distill:{cfg.get('variant') or cfg.get('method') or 'unknown'}"
        row = out.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0, "bytes": 0, "nodes": 0})
        row["seconds"] += float(rec.get("duration_s", 0.0))
        row["peak_rss_mb"] = max(row["peak_rss_mb"], float(rec.get("peak_rss_mb", 0.0)))
        row["bytes"] += int(sum(rec.get("files", {}).values()))
        row["nodes"] += 1
    return out


def point_rows(root: Path, point: tuple[int, int, int], wall: float) -> list[dict[str, Any]]:
    """The rows of one point's root (:func:`stage_rows`) and its ``total`` row (``wall`` seconds; the largest stage
    peak, since ``ru_maxrss`` moves with each stage's reset; the bytes and nodes summed)."""
    classes, per_class, size = point
    stages = stage_rows(root)
    rows = [{"classes": classes, "images_per_class": per_class, "size": size, "stage": stage, **vals}
            for stage, vals in stages.items()]
    rows.append({"classes": classes, "images_per_class": per_class, "size": size, "stage": "total", "seconds": wall,
                 "peak_rss_mb": max(v["peak_rss_mb"] for v in stages.values()),
                 "bytes": sum(v["bytes"] for v in stages.values()), "nodes": sum(v["nodes"] for v in stages.values())})
    for r in rows:
        r["seconds"] = round(r["seconds"], 3)
    return rows


def run_point(text: str, work: Path, *, seed: int = 0) -> dict[str, Any]:
    """Generate the data of one point, run ``ddflow run`` on it in a fresh root, and collect its stage rows."""
    from benchmarks.imagenet_like import generate

    classes, per_class, size = parse_point(text)
    data = work / "data" / f"{classes}x{per_class}@{size}"
    if not (data / "generator.json").exists():
        t0 = time.perf_counter()
        generate(data, classes=classes, per_class=per_class, val_per_class=max(2, per_class // 5), size=size,
                 seed=seed, shard_size=5000, formats=("wds",))
        print(f"[{text}] generated in {time.perf_counter() - t0:.0f} s", flush=True)
    vae, teacher = make_assets(work / "models", classes=classes, size=size, seed=seed)
    name = f"scale-{classes}x{per_class}-{size}"
    root = work / "roots" / name
    if root.exists():
        raise SystemExit(f"{root} exists: every point runs in a fresh root; remove it or pass another --work")
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(point_config(name=name, shards=data / "shards", vae=vae, teacher=teacher),
                                       sort_keys=False))
    env = {**os.environ, "DDFLOW_ROOT": str(root)}
    log = work / f"{name}.log"
    timed = run_timed([str(Path(sys.executable).parent / "ddflow"), "run", str(cfg_path), "--root", str(root)], log,
                      env)
    if timed.returncode != 0:
        raise SystemExit(f"[{text}] ddflow run failed; see {log}")
    summary = json.loads((root / "runs" / name / "summary.json").read_text())
    rows = point_rows(root, (classes, per_class, size), timed.wall_s)
    run = {"point": text, "wall_s": round(timed.wall_s, 1), "flow_s": summary["seconds"],
           "load_start": timed.load_start, "load_end": timed.load_end, "log": str(log),
           "results": [{k: r[k] for k in ("method", "ipc", "labels", "acc_mean")} for r in summary["results"]]}
    return {"rows": rows, "run": run}


def _slope(rows: list[dict[str, Any]], stage: str, a: tuple[int, int, int], b: tuple[int, int, int],
           axis: int) -> float | None:
    """``d log t / d log x`` between points ``a`` and ``b`` (``x``: the ``axis`` entry of the point; for the
    size axis, pixels = size squared)."""
    t = {(r["classes"], r["images_per_class"], r["size"]): r["seconds"] for r in rows if r["stage"] == stage}
    if a not in t or b not in t or t[a] <= 0 or t[b] <= 0:
        return None
    power = 2 if axis == 2 else 1
    return round(math.log(t[b] / t[a]) / (power * math.log(b[axis] / a[axis])), 3)


def fit_exponents(rows: list[dict[str, Any]], size: int = 64) -> dict[str, dict[str, float | None]]:
    """Per stage, the least-squares fit of ``log seconds = a + b log(images per class) + c log(classes)`` over
    the rows at ``size`` (``images`` = b, ``classes`` = c; ``None`` below three distinct points), plus the
    two-point slopes named in the module docstring."""
    out: dict[str, dict[str, float | None]] = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [r for r in rows if r["stage"] == stage and r["size"] == size and r["seconds"] > 0]
        fit: dict[str, float | None] = {"images": None, "classes": None}
        design = np.array([[1.0, math.log(r["images_per_class"]), math.log(r["classes"])] for r in pts])
        if len(pts) >= 3 and np.linalg.matrix_rank(design) == 3:
            coef = np.linalg.lstsq(design, np.log([r["seconds"] for r in pts]), rcond=None)[0]
            fit = {"images": round(float(coef[1]), 3), "classes": round(float(coef[2]), 3)}
        fit["classes_tail"] = _slope(rows, stage, (100, 50, size), (1000, 50, size), 0)
        fit["images_tail"] = _slope(rows, stage, (1000, 10, size), (1000, 50, size), 1)
        fit["pixels"] = _slope(rows, stage, (100, 50, size), (100, 50, 2 * size), 2)
        fit["max_seconds"] = max((r["seconds"] for r in rows if r["stage"] == stage), default=0.0)
        out[stage] = fit
    return out


def print_table(rows: list[dict[str, Any]], exponents: dict[str, dict[str, float | None]]) -> None:
    print(f"\n{'point':>12} {'stage':<16} {'nodes':>5} {'seconds':>9} {'peak MB':>8} {'MB written':>10}")
    for r in rows:
        point = f"{r['classes']}x{r['images_per_class']}@{r['size']}"
        print(f"{point:>12} {r['stage']:<16} {r['nodes']:>5} {r['seconds']:>9.1f} {r['peak_rss_mb']:>8.0f} "
              f"{r['bytes'] / 1e6:>10.1f}")
    print(f"\n{'stage':<16} {'images':>7} {'classes':>8} {'cls tail':>8} {'img tail':>8} {'pixels':>7} {'max s':>7}")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for stage, e in exponents.items():
        print(f"{stage:<16} {fmt(e['images']):>7} {fmt(e['classes']):>8} {fmt(e['classes_tail']):>8} "
              f"{fmt(e['images_tail']):>8} {fmt(e['pixels']):>7} {e['max_seconds']:>7.1f}")


def write_result(out: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the exponents and write ``out`` atomically (its ``projection`` entry, if any, is kept); returns the
    exponents."""
    exponents = fit_exponents(rows)
    old = json.loads(out.read_text()) if out.exists() else {}
    result = {"benchmark": "scale", "base_config": str(BASE_CONFIG.relative_to(REPO)), "micro": MICRO,
              "teacher": TEACHER, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                              "python": platform.python_version()},
              "rows": rows, "exponents": exponents, "runs": runs}
    if "projection" in old:
        result["projection"] = old["projection"]
    write_json(out, result, indent=1)
    return exponents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the generated data, models and artifact roots")
    ap.add_argument("--points", default=",".join(POINTS), help="comma-separated CLASSESxIMAGES@SIZE points")
    ap.add_argument("--out", default=str(OUT_JSON))
    ap.add_argument("--merge", action="store_true", help="keep the rows of other points already in --out")
    ap.add_argument("--collect", action="store_true",
                    help="rebuild the rows of every run in --out from its root under --work; run nothing")
    ap.add_argument("--ipcs", default="1", help="comma-separated IPCs of every point (default 1)")
    args = ap.parse_args()
    MICRO["ipcs"] = [int(v) for v in args.ipcs.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    for p in points:
        parse_point(p)
    out = Path(args.out)
    if args.collect:  # re-read the roots of the runs already in --out (after a change to stage_rows)
        old = json.loads(out.read_text())
        MICRO.clear()
        MICRO.update(old["micro"])
        rows = []
        for run in old["runs"]:
            classes, per_class, size = parse_point(run["point"])
            rows += point_rows(work / "roots" / f"scale-{classes}x{per_class}-{size}", (classes, per_class, size),
                               run["wall_s"])
        print_table(rows, write_result(out, rows, old["runs"]))
        return
    old = json.loads(out.read_text()) if args.merge and out.exists() else {"rows": [], "runs": []}
    keep = set(points)
    rows = [r for r in old["rows"] if f"{r['classes']}x{r['images_per_class']}@{r['size']}" not in keep]
    runs = [r for r in old["runs"] if r["point"] not in keep]
    for p in points:
        res = run_point(p, work)
        rows += res["rows"]
        runs.append(res["run"])
        print(f"[{p}] {res['run']['wall_s']:.0f} s wall, load {res['run']['load_start']} -> {res['run']['load_end']}",
              flush=True)
        exponents = write_result(out, rows, runs)  # after every point: a later failure keeps the earlier ones
    print_table(rows, exponents)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
