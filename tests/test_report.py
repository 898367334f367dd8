"""The report stage: DD-Ranking scores per round paired by network seed (docs/methods.md §A4), the storage budget
IOR compares at, and the pruned / unpruned / distilled-directly rows of a post-pruning run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ddcore.data import open_artifact
from ddcore.data.synthetic_io import save_synthetic
from ddcore.errors import ConfigError
from ddcore.evaluate.metrics import lrs, summarize
from ddcore.synthetic import SyntheticSet
from tasks.configs import ReportConfig, ReportRow
from tasks.report import build_rows
from tasks.runtime.refs import ArtifactRef

pytest_plugins = ["orchestration_fixtures"]

CFG = ReportConfig(run="t", full_data_acc=0.9)


def _results(tmp: Path, name: str, accs: list[float], seeds: list[int] | None = None, ipc: int = 2) -> ArtifactRef:
    """An evaluation ``results.json`` with one round per (accuracy, network seed)."""
    folder = tmp / name.replace("/", "_")
    folder.mkdir()
    seeds = list(range(len(accs))) if seeds is None else seeds
    mean, std = summarize(accs)
    doc = {"rounds": [{"acc": a, "seed": s} for a, s in zip(accs, seeds, strict=True)], "accs": accs,
           "acc_mean": mean, "acc_std": std, "protocol": "p", "n_images": 10 * ipc, "ipc": ipc}
    (folder / "results.json").write_text(json.dumps(doc))
    return ArtifactRef(uri=str(folder), sha256="0" * 64, stage="evaluate", key="0" * 20, kind="eval")


def _set(tmp: Path, name: str, per_class: int, extra: dict[str, Any]) -> ArtifactRef:
    """A two-class synthetic-set artifact of ``per_class`` images per class with manifest ``extra``."""
    sset = SyntheticSet(images=torch.zeros(2 * per_class, 1, 4, 4), labels=torch.arange(2).repeat_interleave(per_class),
                        mean=(0.0,), std=(1.0,), num_classes=2, method="ncfm", extra=extra)
    save_synthetic(sset, tmp / name, classes=["a", "b"], source={"name": name, "kind": "test"})
    digest = open_artifact(tmp / name, verify="none").digest
    return ArtifactRef(uri=str(tmp / name), sha256=digest, stage="distill", key="1" * 20, kind="synthetic")


def _spec(label: str, ipc: int, *, baseline: str | None, hard: str | None = "", synthetic: str = "set",
          pruned_from: tuple[str, int] | None = None) -> ReportRow:
    """A typed report row reading input ``eval/<label>`` (its hard-label evaluation unless ``hard`` is given)."""
    ev = f"eval/{label}"
    return ReportRow(label=label, ipc=ipc, evaluation=ev, synthetic=synthetic, baseline=baseline,
                     hard=ev if hard == "" else hard, pruned_from=pruned_from)


def _row(rows: list[dict], method: str, ipc: int = 2) -> dict:
    return next(r for r in rows if r["method"] == method and r["ipc"] == ipc)


def test_soft_row_hlr_uses_the_hard_label_accuracies_of_the_same_set(tmp_path: Path) -> None:
    """A ``+soft`` row's IOR is soft vs the soft baseline, but its HLR is full-data minus the HARD-label accuracy
    of the same set (row named in hlr_from), LRS combines them per round; rounds pair by network seed (listed in
    another order here), and each score comes with its std over rounds."""
    inputs = {"eval/ddoq": _results(tmp_path, "hard", [0.5, 0.6]),
              "eval/ddoq+soft": _results(tmp_path, "soft", [0.8, 0.7], seeds=[1, 0]),
              "baseline/2": _results(tmp_path, "base", [0.4, 0.5]),
              "baseline/2/soft": _results(tmp_path, "base-soft", [0.6, 0.65]), "set": _set(tmp_path, "s", 2, {})}
    specs = (_spec("ddoq", 2, baseline="baseline/2"),
             _spec("ddoq+soft", 2, baseline="baseline/2/soft", hard="eval/ddoq"))
    rows = build_rows(inputs, CFG.model_copy(update={"rows": specs}))
    soft = _row(rows, "ddoq+soft")
    assert (soft["ior"], soft["ior_std"]) == pytest.approx((0.125, 0.025))  # seed 0: .7-.6, seed 1: .8-.65
    assert (soft["hlr"], soft["hlr_std"]) == pytest.approx((0.35, 0.05))  # .9-.5, .9-.6: not .9-.7, .9-.8
    assert soft["hlr_from"] == "ddoq" and _row(rows, "ddoq")["hlr_from"] == "ddoq"
    assert (soft["lrs"], soft["lrs_std"]) == pytest.approx(summarize([lrs(0.1, 0.4), lrs(0.15, 0.3)]))
    hard = _row(rows, "ddoq")
    assert (hard["ior"], hard["hlr"]) == pytest.approx((0.1, 0.35)) and hard["baseline_ipc"] == 2
    alone = build_rows(inputs, CFG.model_copy(update={"rows": (
        _spec("ddoq+soft", 2, baseline="baseline/2/soft", hard=None),)}))
    assert _row(alone, "ddoq+soft")["hlr"] is None and _row(alone, "ddoq+soft")["hlr_from"] is None
    assert _row(alone, "ddoq+soft")["ior"] == pytest.approx(0.125)


def test_rounds_without_a_partner_seed_are_a_one_line_config_error(tmp_path: Path) -> None:
    """A set evaluated with 3 rounds against a 2-round baseline (or other seeds) fails with one line naming
    both seed lists, instead of silently pairing the first rounds."""
    cfg = CFG.model_copy(update={"rows": (_spec("dm", 2, baseline="baseline/2"),)})
    inputs = {"eval/dm": _results(tmp_path, "dm", [0.5, 0.6, 0.7]), "baseline/2": _results(tmp_path, "b", [0.4, 0.5]),
              "set": _set(tmp_path, "s", 2, {})}
    with pytest.raises(ConfigError, match=r"seeds \[0, 1, 2\] but baseline/2 has \[0, 1\]") as info:
        build_rows(inputs, cfg)
    assert "\n" not in str(info.value)
    shifted = {**inputs, "baseline/2": _results(tmp_path, "b2", [0.4, 0.5, 0.6], [1, 2, 3])}
    with pytest.raises(ConfigError, match="same evaluation.seed and num_eval"):
        build_rows(shifted, cfg)


def test_mosaic_set_is_compared_at_its_stored_ipc(tmp_path: Path) -> None:
    """An NCFM factor-2 set storing 1 mosaic per class (decoded into 4 images) is recorded as stored_ipc 1,
    images_per_class 4, against a random baseline of 1 real image per class; a pruned set's decoded crops count
    as stored images, and its row names the row of the set it was pruned from."""
    mosaic = _set(tmp_path, "ncfm", 4, {"factor": 2, "stored_ipc": 1})
    pruned = _set(tmp_path, "ncfm-pruned", 2, {"factor": 2, "stored_ipc": 1, "pruned_from": "ncfm",
                                                "pruned_from_digest": mosaic.sha256})
    inputs = {"eval/ncfm": _results(tmp_path, "e1", [0.6, 0.7], ipc=4), "set/ncfm": mosaic,
              "eval/ncfm+prune": _results(tmp_path, "e2", [0.5, 0.6], ipc=2), "set/ncfm+prune": pruned,
              "baseline/1": _results(tmp_path, "b", [0.4, 0.5], ipc=1)}
    specs = (_spec("ncfm", 1, baseline="baseline/1", synthetic="set/ncfm"),
             _spec("ncfm+prune", 1, baseline="baseline/1", synthetic="set/ncfm+prune", pruned_from=("ncfm", 1)))
    rows = build_rows(inputs, ReportConfig(run="t", rows=specs))
    row = _row(rows, "ncfm", 1)
    assert (row["stored_ipc"], row["images_per_class"], row["baseline_ipc"]) == (1, 4, 1)
    assert row["ior"] == pytest.approx(0.2) and row["hlr"] is None and row["pruned_from"] is None
    prow = _row(rows, "ncfm+prune", 1)
    assert (prow["stored_ipc"], prow["images_per_class"], prow["baseline_ipc"]) == (2, 2, 1)
    assert prow["pruned_from"] == {"method": "ncfm", "ipc": 1}


def _prune_config(path: Path, fmnist: Path) -> Path:
    path.write_text(f"""
name: pr
ipcs: [1, 2]
data: {{source: {{kind: fashion_mnist, root: {fmnist}}}, shard_size: 50}}
methods:
  dm: {{iterations: 2, width: 8, batch_real: 8, checkpoint_every: 0}}
prune: {{fraction: 0.5, width: 8, methods: [dm]}}
evaluation: {{epochs: 1, width: 8, num_eval: 2}}
tracking: {{enabled: false}}
""")
    return path


def test_a_prune_run_reports_pruned_unpruned_and_directly_distilled_rows(fake_fmnist: Path, tmp_path: Path,
                                                                        prefect_harness: None) -> None:
    """With ipcs [1, 2] and pruning to half: dm@1 and dm@2 (distilled directly), dm+prune@1 (from the IPC-2 set,
    which IS the dm@2 row, evaluated once) and dm+prune@2 (from an IPC-4 set, reported as its own unpruned row
    dm@4, with a random baseline of its own size); the summary states the IOR baseline rule."""
    from flows.distill import distill_flow

    summary = distill_flow(str(_prune_config(tmp_path / "c.yaml", fake_fmnist)), [], str(tmp_path / "root"))
    rows = summary["results"]
    assert sorted((r["method"], r["ipc"]) for r in rows) == [("dm", 1), ("dm", 2), ("dm", 4), ("dm+prune", 1),
                                                             ("dm+prune", 2)]
    assert _row(rows, "dm+prune", 1)["pruned_from"] == {"method": "dm", "ipc": 2}
    assert _row(rows, "dm+prune", 2)["pruned_from"] == {"method": "dm", "ipc": 4}
    assert _row(rows, "dm", 2)["pruned_from"] is None and _row(rows, "dm", 4)["images_per_class"] == 4
    assert _row(rows, "dm", 4)["baseline_ipc"] == 4 and _row(rows, "dm", 4)["ior"] is not None
    assert _row(rows, "dm+prune", 2)["baseline_ipc"] == 2 and _row(rows, "dm+prune", 2)["ior"] is not None
    names = [s["name"] for s in summary["stages"]]
    assert names.count("evaluate/dm/ipc2") == 1 and names.count("evaluate/dm/ipc4") == 1
    assert names.count("baseline/ipc4") == 1
    assert "storage budget" in summary["ior_baseline"]
