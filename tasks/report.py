"""Stage ``report``: one table of results from the evaluation outputs, plus plots.

Inputs are named ``eval/<label>/<ipc>`` (a set's evaluation), ``baseline/<ipc>`` (random subsets of
that IPC; ``baseline/<ipc>/soft`` under the soft-label teacher, paired with ``<method>+soft`` rows) and
``set/<label>/<ipc>`` (the evaluated synthetic set). Accuracies are fractions. IOR is
paired by round (same network seed); HLR/LRS need a full-data accuracy (``full_data_acc``).
Output: ``results.json`` and ``accuracy_vs_ipc.png``.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from ddcore.data import storage as fsio
from ddcore.evaluate.metrics import hlr, ior, lrs, summarize
from tasks.configs import ReportConfig
from tasks.evaluate import read_results
from tasks.refs import ArtifactRef
from tasks.stage import StageContext, make_stage_task
from tasks.store import REF_FILE

RESULTS = "results.json"


def _record_metrics(uri: str) -> dict[str, Any]:
    fs, path = fsio.get_fs(uri)
    try:
        return json.loads(fs.cat_file(fsio.join(path, REF_FILE))).get("metrics", {})
    except FileNotFoundError:
        return {}


def build_rows(inputs: dict[str, ArtifactRef], config: ReportConfig) -> list[dict[str, Any]]:
    """Result rows, one per evaluated ``(label, ipc)``, in input order."""
    rows = []
    for name, ref in inputs.items():
        parts = name.split("/")
        if parts[0] != "eval":
            continue
        label, ipc = parts[1], int(parts[2])
        res = read_results(ref.uri)
        bkey = f"baseline/{ipc}/soft" if label.endswith("+soft") else f"baseline/{ipc}"
        base = read_results(inputs[bkey].uri) if bkey in inputs else None
        row: dict[str, Any] = {"method": label, "ipc": ipc, "acc_mean": res["acc_mean"], "acc_std": res["acc_std"],
                               "n_eval": len(res["accs"]), "random_mean": None, "random_std": None, "ior": None,
                               "hlr": None, "lrs": None, "protocol": res["protocol"], "n_images": res["n_images"],
                               "labels": res.get("labels", "set")}
        if base is not None:
            iors = [ior(a, b) for a, b in zip(res["accs"], base["accs"], strict=False)]
            row.update(random_mean=base["acc_mean"], random_std=base["acc_std"], ior=summarize(iors)[0])
            if config.full_data_acc is not None:
                hl = [hlr(config.full_data_acc, a) for a in res["accs"]]
                scores = [lrs(i, h, weight=config.lrs_weight) for i, h in zip(iors, hl, strict=False)]
                row.update(hlr=summarize(hl)[0], lrs=summarize(scores)[0])
        syn = inputs.get(f"set/{label}/{ipc}")
        row["seconds"] = float(_record_metrics(syn.uri).get("seconds", 0.0)) if syn else 0.0
        row["artifact"] = syn.uri if syn else None
        row["digest"] = syn.sha256 if syn else None
        rows.append(row)
    return rows


def accuracy_plot(rows: list[dict[str, Any]]) -> bytes:
    """PNG of accuracy vs IPC per method, random baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label in sorted({r["method"] for r in rows}):
        pts = sorted((r["ipc"], r["acc_mean"], r["acc_std"]) for r in rows if r["method"] == label)
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], marker="o",
                    label=label, capsize=3)
    rnd = sorted({(r["ipc"], r["random_mean"]) for r in rows if r["random_mean"] is not None})
    if rnd:
        ax.plot([p[0] for p in rnd], [100 * p[1] for p in rnd], "k--", label="random")
    ax.set_xscale("log")
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report_stage(inputs: dict[str, ArtifactRef], config: ReportConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    rows = build_rows(inputs, config)
    fs, path = fsio.get_fs(out)
    fs.makedirs(path, exist_ok=True)
    with fsio.open_write(fs, fsio.join(path, RESULTS)) as f:
        f.write(json.dumps({"run": config.run, "results": rows}, indent=2, sort_keys=True).encode())
    with fsio.open_write(fs, fsio.join(path, "accuracy_vs_ipc.png")) as f:
        f.write(accuracy_plot(rows))
    for i, r in enumerate(rows):
        ctx.log_metrics(i, {f"acc/{r['method']}/ipc{r['ipc']}": r["acc_mean"]})
    return {"rows": len(rows), "seconds": time.perf_counter() - t0}


def read_report(uri: str) -> dict[str, Any]:
    fs, path = fsio.get_fs(uri)
    return json.loads(fs.cat_file(fsio.join(path, RESULTS)))


REPORT = make_stage_task("report", report_stage, "report", retries=1)
