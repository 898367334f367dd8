"""What an S3 artifact root costs against a local one: the same pipeline run twice, time per stage.

Starts an S3-compatible server (``moto_server``, from the ``moto[server]`` package, in memory on 127.0.0.1),
runs ``ddflow run <config>`` once with a local ``--root`` and once with ``--root s3://...`` (both uncached, both
tracked in MLflow: a SQLite store in the run's temp folder), and compares the seconds of every stage from the two
run summaries, plus the bytes each stage stored. The server is on this machine, so the figures are the client
side of the object store (HTTP, whole-object puts, copies instead of renames, re-reading for digests) without a
network's latency or bandwidth; a remote bucket adds those per request and per byte.

Prints a table and writes ``benchmarks/results/object_store.json`` (stages, totals, the machine and its load).
Usage: ``python benchmarks/object_store.py [--config configs/demo.yaml] [--set key=value ...] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import run_timed, write_json

BUCKET = "ddflow-bench"


def start_s3(port: int, log: Path) -> subprocess.Popen:
    """A moto S3 server on 127.0.0.1:``port``, answering before this returns."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise SystemExit(f"error: {exe} not found; install the S3 test server with: pip install 'moto[server]'")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"error: moto_server did not start; see {log}") from None
            time.sleep(0.3)


def run_pipeline(config: str, sets: list[str], root: str, work: Path, env: dict[str, str], tag: str) -> dict:
    """``ddflow run`` with its own MLflow store and Prefect home; returns the run summary and the wall time."""
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / tag / 'mlflow.db'}", "PREFECT_HOME": str(work / tag)}
    (work / tag).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "flows.cli", "run", config, "--root", root, *[a for s in sets for a in ("--set", s)]]
    timed = run_timed(cmd, work / tag / "run.log", env)
    if timed.returncode != 0:
        tail = (work / tag / "run.log").read_text(errors="replace").splitlines()[-40:]
        raise SystemExit("\n".join([*tail, f"error: the {tag} run failed (its log ends above)"]))
    return {"wall_s": round(timed.wall_s, 1), "load_start": timed.load_start, "load_end": timed.load_end,
            "summary": read_summary(root, env)}


def read_summary(root: str, env: dict[str, str]) -> dict:
    from ddcore.data import storage

    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    fs, base = storage.get_fs(root)
    found = fs.glob(f"{base.rstrip('/')}/runs/*/summary.json")
    return json.loads(fs.cat_file(found[0]))


def stage_bytes(root: str) -> dict[str, int]:
    """Bytes under every ``<stage>/<key>`` folder of ``root``, by ``stage/key``."""
    from ddcore.data import storage

    fs, base = storage.get_fs(root)
    sizes: dict[str, int] = {}
    for path, info in fs.find(base, detail=True).items():
        rel = path[len(base.rstrip("/")) + 1:].split("/")
        if len(rel) >= 3 and not rel[0].startswith(("_", "runs", "mlartifacts")):
            key = f"{rel[0]}/{rel[1]}"
            sizes[key] = sizes.get(key, 0) + int(info.get("size") or 0)
    return sizes


def compare(local: dict, remote: dict) -> list[dict[str, Any]]:
    """One row per stage of the local run: seconds on each root and the difference."""
    by_name = {s["name"]: s for s in remote["summary"]["stages"]}
    rows = []
    for st in local["summary"]["stages"]:
        other = by_name.get(st["name"])
        if other is None:
            continue
        rows.append({"stage": st["name"], "local_s": round(st["seconds"], 2), "s3_s": round(other["seconds"], 2),
                     "overhead_s": round(other["seconds"] - st["seconds"], 2),
                     "overhead_pct": round(100 * (other["seconds"] - st["seconds"]) / max(st["seconds"], 1e-9), 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, as ddflow run --set")
    ap.add_argument("--out", default="benchmarks/results/object_store.json")
    args = ap.parse_args()
    from flows.temp_server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ddflow-s3-bench-") as tmp:
        work = Path(tmp)
        server = start_s3(port, work / "moto.log")
        try:
            env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            from ddcore.data import storage

            storage.get_fs(f"s3://{BUCKET}")[0].mkdir(BUCKET)
            roots = {"local": str(work / "local-root"), "s3": f"s3://{BUCKET}/root"}
            runs = {tag: run_pipeline(args.config, args.sets, root, work, env, tag) for tag, root in roots.items()}
            sizes = {tag: stage_bytes(root) for tag, root in roots.items()}
        finally:
            server.terminate()
            server.wait(timeout=30)
    rows = compare(runs["local"], runs["s3"])
    total = {tag: round(sum(s["seconds"] for s in r["summary"]["stages"]), 1) for tag, r in runs.items()}
    res = {"benchmark": "object_store", "config": args.config, "overrides": args.sets,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "server": "moto_server on 127.0.0.1 (in memory)",
           "stages": rows, "stage_seconds_total": total,
           "wall_s": {tag: r["wall_s"] for tag, r in runs.items()},
           "load": {tag: [r["load_start"], r["load_end"]] for tag, r in runs.items()},
           "stored_mb": {tag: round(sum(v.values()) / 1e6, 1) for tag, v in sizes.items()},
           "digests_equal": sorted((r["method"], r["ipc"], r["digest"]) for r in runs["local"]["summary"]["results"])
           == sorted((r["method"], r["ipc"], r["digest"]) for r in runs["s3"]["summary"]["results"])}
    print(f"{'stage':<34}{'local s':>9}{'s3 s':>9}{'+s':>8}{'+%':>7}")
    for r in rows:
        print(f"{r['stage']:<34}{r['local_s']:>9.1f}{r['s3_s']:>9.1f}{r['overhead_s']:>8.1f}{r['overhead_pct']:>7.1f}")
    print(f"{'total (stage seconds)':<34}{total['local']:>9.1f}{total['s3']:>9.1f}"
          f"{total['s3'] - total['local']:>8.1f}{100 * (total['s3'] - total['local']) / total['local']:>7.1f}")
    print(f"wall: {res['wall_s']}  load (start, end): {res['load']}  stored MB: {res['stored_mb']}  "
          f"same digests: {res['digests_equal']}")
    out = Path(args.out)
    write_json(out, res, indent=1, newline=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
