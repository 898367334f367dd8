"""Stage ``report``: one table of results from the evaluation outputs, plus plots.

Inputs are named ``eval/<label>/<ipc>`` (a set's evaluation), ``baseline/<ipc>`` (random subsets of
that IPC; ``baseline/<ipc>/soft`` under the soft-label teacher, paired with ``<method>+soft`` rows) and
``set/<label>/<ipc>`` (the evaluated synthetic set). Accuracies are fractions. The DD-Ranking scores
(ecosystem.md §A4) are computed per round, rounds paired by network seed, and reported as mean and std:

- IOR = Acc(set, its own recipe) − Acc(random real subset, same recipe): a ``+soft`` row against the
  soft-label baseline, every other row against the hard-label one.
- HLR = ``full_data_acc`` − Acc(set, hard labels): for a ``<label>+soft`` row the accuracies of the
  hard-label row ``<label>`` of the same set (named in ``hlr_from``; no HLR/LRS without that row).
- LRS from each round's IOR and HLR.

IOR compares at the same storage budget (DD-Ranking): the random subset has as many real images per class
as the set stores (``stored_ipc``), even when stored mosaics decode into more training images (``images_per_class``).
Output: ``results.json`` and ``accuracy_vs_ipc.png``.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from ddcore.evaluate.metrics import accs_by_seed, paired_scores, stored_ipc
from tasks.configs import ReportConfig
from tasks.evaluate import read_results
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task
from tasks.runtime.store import REF_FILE

RESULTS = "results.json"
SOFT = "+soft"
IOR_BASELINE = ("same storage budget (DD-Ranking): random real subset with baseline_ipc = the row's IPC of stored "
                "images (stored_ipc); a set whose stored images decode into more (images_per_class) is not given "
                "a larger baseline")
HLR_RULE = ("per round (paired by network seed): HLR = full_data_acc - hard-label accuracy of the row named in "
            "hlr_from (a +soft row uses its hard-label row); LRS from that round's IOR and HLR; *_std over rounds")


def _record_metrics(uri: str) -> dict[str, Any]:
    fs, path = fsio.get_fs(uri)
    try:
        return json.loads(fs.cat_file(fsio.join(path, REF_FILE))).get("metrics", {})
    except FileNotFoundError:
        return {}


def _scores(row: dict[str, Any], name: str, res: dict[str, Any], base: dict[str, Any] | None, bname: str,
            hard: dict[str, Any] | None, hname: str, config: ReportConfig) -> None:
    """IOR against ``base``, HLR from the hard-label results ``hard`` (with ``full_data_acc``) and LRS from both,
    per round paired by network seed (:func:`ddcore.evaluate.metrics.paired_scores`), into ``row`` as mean and
    std."""
    syn = accs_by_seed(res, name)
    hard_accs = None
    if config.full_data_acc is not None and hard is not None:
        hard_accs = syn if hard is res else accs_by_seed(hard, hname)
    s = paired_scores(syn, baseline=accs_by_seed(base, bname) if base is not None else None, hard=hard_accs,
                      full_data_acc=config.full_data_acc, lrs_weight=config.lrs_weight, names=(name, bname, hname))
    if base is not None:
        row.update(random_mean=s.random_mean, random_std=s.random_std, baseline_ipc=int(base["ipc"]), ior=s.ior,
                   ior_std=s.ior_std)
    if s.hlr is not None:
        row.update(hlr=s.hlr, hlr_std=s.hlr_std, hlr_from=hname.split("/")[1])
    if s.lrs is not None:
        row.update(lrs=s.lrs, lrs_std=s.lrs_std)


def build_rows(inputs: dict[str, ArtifactRef], config: ReportConfig) -> list[dict[str, Any]]:
    """Result rows, one per evaluated ``(label, ipc)``, in input order.

    A pruned set's row names the row of the set it was pruned from in ``pruned_from`` (``{method, ipc}``; the
    same kind of labels), so pruned, unpruned and distilled-directly rows can be told apart.
    """
    rows, sources = [], []
    for name, ref in inputs.items():
        parts = name.split("/")
        if parts[0] != "eval":
            continue
        label, ipc = parts[1], int(parts[2])
        res = read_results(ref.uri)
        soft = label.endswith(SOFT)
        bkey = f"baseline/{ipc}/soft" if soft else f"baseline/{ipc}"
        base = read_results(inputs[bkey].uri) if bkey in inputs else None
        hkey, hard = name, res
        if soft:  # HLR needs the same set's accuracies under hard labels: its hard-label row
            hkey = f"eval/{label[: -len(SOFT)]}/{ipc}"
            hard = read_results(inputs[hkey].uri) if hkey in inputs else None
        syn = inputs.get(f"set/{label}/{ipc}")
        per_class = int(res["ipc"])  # training images per class the evaluation used (decoded)
        extra = open_artifact(syn.uri, verify="none").meta.extra if syn is not None else {}
        row: dict[str, Any] = {"method": label, "ipc": ipc, "acc_mean": res["acc_mean"], "acc_std": res["acc_std"],
                               "n_eval": len(res["accs"]), "random_mean": None, "random_std": None, "ior": None,
                               "hlr": None, "lrs": None, "ior_std": None, "hlr_std": None, "lrs_std": None,
                               "hlr_from": None, "baseline_ipc": None,
                               "stored_ipc": stored_ipc(extra, per_class),
                               "images_per_class": per_class, "protocol": res["protocol"],
                               "n_images": res["n_images"], "labels": res.get("labels", "set")}
        _scores(row, name, res, base, bkey, hard, hkey, config)
        row["seconds"] = float(_record_metrics(syn.uri).get("seconds", 0.0)) if syn else 0.0
        row["artifact"] = syn.uri if syn else None
        row["digest"] = syn.sha256 if syn else None
        rows.append(row)
        sources.append(extra.get("pruned_from_digest"))
    by_set = {(r["digest"], r["labels"]): r for r in rows if r["digest"]}
    for row, src in zip(rows, sources, strict=True):
        unpruned = by_set.get((src, row["labels"])) if src else None
        row["pruned_from"] = {"method": unpruned["method"], "ipc": unpruned["ipc"]} if unpruned else None
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
        f.write(json.dumps({"run": config.run, "results": rows, "ior_baseline": IOR_BASELINE, "hlr_rule": HLR_RULE},
                           indent=2, sort_keys=True).encode())
    with fsio.open_write(fs, fsio.join(path, "accuracy_vs_ipc.png")) as f:
        f.write(accuracy_plot(rows))
    for i, r in enumerate(rows):
        ctx.log_metrics(i, {f"acc/{r['method']}/ipc{r['ipc']}": r["acc_mean"]})
    return {"rows": len(rows), "seconds": time.perf_counter() - t0}


def read_report(uri: str) -> dict[str, Any]:
    fs, path = fsio.get_fs(uri)
    return json.loads(fs.cat_file(fsio.join(path, RESULTS)))


REPORT = make_stage_task("report", report_stage, "report", retries=1)
