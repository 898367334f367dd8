"""The hyperbolic validation study (benchmarks/hyperbolic.py): its validation split holds out images that no
set is made from, and a tiny run on scikit-learn's real digits writes points that its table pairs with DM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.hyperbolic import phase_points, split_fit_val
from ddcore.sampling import TensorSampler

REPO = Path(__file__).resolve().parents[1]


def test_validation_split_is_disjoint_from_the_fit_part_and_seeded() -> None:
    """Per class, the fit positions and the held-out images partition the class; the same seed holds out the
    same images, another seed others."""
    x = torch.arange(3 * 20, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    y = torch.arange(3).repeat_interleave(20)
    sampler = TensorSampler(x, y, 3, (0.0,), (1.0,))
    fit, (vx, vy) = split_fit_val(sampler, 0.25, seed=0)
    for c in range(3):
        held = {float(v) for v in vx[vy == c, 0, 0, 0]}
        used = {float(sampler.get(c, torch.as_tensor(fit[c]))[i, 0, 0, 0]) for i in range(len(fit[c]))}
        assert len(held) == 5 and len(used) == 15 and not held & used
        assert held | used == {float(v) for v in x[y == c, 0, 0, 0]}
    again, (vx2, _) = split_fit_val(sampler, 0.25, seed=0)
    other, _ = split_fit_val(sampler, 0.25, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(fit, again, strict=True)) and torch.equal(vx, vx2)
    assert not all(np.array_equal(a, b) for a, b in zip(fit, other, strict=True))


def test_every_prune_rule_has_its_random_control() -> None:
    """Each (method, fraction) of the prune phase has closest, farthest, stratified and a random subset."""
    names = {p["name"] for p in phase_points("prune")}
    for name in [n for n in names if n.endswith("-stratified")]:
        stem = name.removesuffix("-stratified")
        assert {f"{stem}-closest", f"{stem}-farthest", f"{stem}-random"} <= names


@pytest.mark.slow  # ~40 s: ingests the digits and trains 12 tiny networks
def test_a_tiny_study_on_real_digits_pairs_every_point_with_dm(tmp_path: Path) -> None:
    """The study on scikit-learn's digits (real, upscaled to 28x28) with a tiny budget writes one row per point
    with its per-seed accuracies, and the table pairs every point but DM with DM."""
    out = tmp_path / "digits.json"
    budget = json.dumps({"width": 8, "iterations": 2, "eval_epochs": 1, "num_eval": 2, "batch_real": 8})
    subprocess.run([sys.executable, "-m", "benchmarks.hyperbolic", "--phase", "hdd", "--dataset", "digits",
                    "--points", "random,dm,hdd-lr1", "--val-fraction", "0.25", "--budget", budget, "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["rows"]] == ["random", "dm", "hdd-lr1"] and res["split"] == "val"
    assert all(len(r["accs"]) == 2 and r["eval_seeds"] == [0, 1] for r in res["rows"])
    table = subprocess.run([sys.executable, "-m", "benchmarks.hyperbolic", "--table", str(out)], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.splitlines()
    rows = {line.split("|")[3].strip(): line.split("|")[6].strip() for line in table[2:]}
    assert rows["dm"] == "–" and rows["hdd-lr1"] != "–" and rows["random"] != "–"
