"""Stage ``report``: one table of results from the evaluation outputs, plus plots.

The rows come typed in the config (:class:`~tasks.configs.ReportRow`, laid out by the run plan); each names
its inputs: the set's evaluation, the set, the random-subset baseline (the soft-label one for a ``+soft``
row) and the hard-label evaluation HLR reads. Accuracies are fractions. The DD-Ranking scores
(docs/methods.md §A4) are computed per round, rounds paired by network seed, and reported as mean and std:

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
import time
from typing import Any

from ddcore.data import open_artifact
from ddcore.data import storage as fsio
from ddcore.evaluate.metrics import accs_by_seed, paired_scores, stored_ipc
from tasks.configs import ReportConfig
from tasks.evaluate import read_results, write_results
from tasks.runtime.refs import ArtifactRef, read_record_at
from tasks.runtime.stage import StageContext, make_stage_task

IOR_BASELINE = ("same storage budget (DD-Ranking): random real subset with baseline_ipc = the row's IPC of stored "
                "images (stored_ipc); a set whose stored images decode into more (images_per_class) is not given "
                "a larger baseline")
HLR_RULE = ("per round (paired by network seed): HLR = full_data_acc - hard-label accuracy of the row named in "
            "hlr_from (a +soft row uses its hard-label row); LRS from that round's IOR and HLR; *_std over rounds")


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
        row.update(hlr=s.hlr, hlr_std=s.hlr_std)
    if s.lrs is not None:
        row.update(lrs=s.lrs, lrs_std=s.lrs_std)


def build_rows(inputs: dict[str, ArtifactRef], config: ReportConfig) -> list[dict[str, Any]]:
    """Result rows, one per :class:`~tasks.configs.ReportRow` of ``config`` (the plan's order).

    A pruned set's row names the row of the set it was pruned from in ``pruned_from`` (``{method, ipc}``), so
    pruned, unpruned and distilled-directly rows can be told apart.
    """
    label_of = {spec.evaluation: spec.label for spec in config.rows}
    known = {(spec.label, spec.ipc) for spec in config.rows}
    rows = []
    for spec in config.rows:
        res = read_results(inputs[spec.evaluation].uri)
        base = read_results(inputs[spec.baseline].uri) if spec.baseline else None
        hard = res if spec.hard == spec.evaluation else read_results(inputs[spec.hard].uri) if spec.hard else None
        syn = inputs[spec.synthetic]
        per_class = int(res["ipc"])  # training images per class the evaluation used (decoded)
        extra = open_artifact(syn.uri, verify="none").meta.extra
        row: dict[str, Any] = {"method": spec.label, "ipc": spec.ipc, "acc_mean": res["acc_mean"],
                               "acc_std": res["acc_std"], "n_eval": len(res["accs"]), "random_mean": None,
                               "random_std": None, "ior": None, "hlr": None, "lrs": None, "ior_std": None,
                               "hlr_std": None, "lrs_std": None, "hlr_from": None, "baseline_ipc": None,
                               "stored_ipc": stored_ipc(extra, per_class),
                               "images_per_class": per_class, "protocol": res["protocol"],
                               "n_images": res["n_images"], "labels": res.get("labels", "set")}
        _scores(row, spec.evaluation, res, base, spec.baseline or "", hard, spec.hard or "", config)
        if row["hlr"] is not None:
            row["hlr_from"] = label_of.get(spec.hard, spec.label)
        rec = read_record_at(syn.uri)
        row["seconds"] = float(rec.metrics.get("seconds", 0.0)) if rec is not None else 0.0
        row["artifact"], row["digest"] = syn.uri, syn.sha256
        src = spec.pruned_from
        row["pruned_from"] = {"method": src[0], "ipc": src[1]} if src is not None and tuple(src) in known else None
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
    write_results(out, {"run": config.run, "results": rows, "ior_baseline": IOR_BASELINE, "hlr_rule": HLR_RULE})
    fs, path = fsio.get_fs(out)
    with fsio.open_write(fs, fsio.join(path, "accuracy_vs_ipc.png")) as f:
        f.write(accuracy_plot(rows))
    for i, r in enumerate(rows):
        ctx.log_metrics(i, {f"acc/{r['method']}/ipc{r['ipc']}": r["acc_mean"]})
    return {"rows": len(rows), "seconds": time.perf_counter() - t0}


read_report = read_results  # the report's results.json


REPORT = make_stage_task("report", report_stage, "report", retries=1)
