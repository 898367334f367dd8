"""Summary statistics and the DD-Ranking scores (docs/methods.md §A4), on accuracies as FRACTIONS.

- IOR (improvement over random) = Acc(syn) − Acc(random real subset, same IPC, identical recipe).
- HLR (hard-label recovery) = Acc(full real data) − Acc(syn); lower is better.
- α = w·IOR − (1 − w)·HLR, LRS = (e^α − e^−1) / (e − e^−1), mapping α ∈ [−1, 1] onto [0, 1].
- β = γ·[Acc(syn, aug) − Acc(rdm, aug)] + (1 − γ)·[Acc(syn, no aug) − Acc(rdm, no aug)],
  ARS = (e^β − e^−1) / (e − e^−1).

DD-Ranking itself feeds percentages into these formulas, which pushes the "normalised" scores far
outside [0, 1]; every function here rejects values above 1 so that cannot happen silently.

:func:`paired_scores` is the one place the scores of an evaluated set are computed from its rounds: per
round, rounds paired by network seed, reported as mean and std over rounds. It is used by the report stage,
:func:`ddcore.evaluate.suite.evaluate_with_baseline`, the direct path and the quality benchmark.
:func:`stored_ipc` is the storage-budget rule that sizes the random baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ddcore.errors import ConfigError

_E_INV = math.exp(-1.0)
_SPAN = math.e - _E_INV


def check_fraction(value: float, name: str = "accuracy") -> float:
    """``value`` as float if it lies in [0, 1]; otherwise :class:`ConfigError` (percentages are rejected)."""
    v = float(value)
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ConfigError(f"{name} must be a fraction in [0, 1], got {value}; divide percentages by 100")
    return v


def summarize(accs: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``accs`` with the population std (ddof = 0, as numpy's default in DC/DD-Ranking)."""
    if len(accs) == 0:
        raise ValueError("summarize needs at least one value")
    mean = math.fsum(accs) / len(accs)
    var = math.fsum((a - mean) ** 2 for a in accs) / len(accs)
    return mean, math.sqrt(var)


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over random: Acc(syn) − Acc(random subset), fractions."""
    return check_fraction(acc_syn, "acc_syn") - check_fraction(acc_random, "acc_random")


def hlr(acc_full: float, acc_syn: float) -> float:
    """Hard-label recovery: Acc(full data) − Acc(syn), fractions; lower is better."""
    return check_fraction(acc_full, "acc_full") - check_fraction(acc_syn, "acc_syn")


def _squash(alpha: float) -> float:
    return (math.exp(alpha) - _E_INV) / _SPAN


def lrs(ior_value: float, hlr_value: float, *, weight: float = 0.5) -> float:
    """Label-robust score: α = w·IOR − (1 − w)·HLR mapped by (e^α − e^−1)/(e − e^−1).

    Args:
        ior_value, hlr_value: IOR and HLR as differences of fractions (each in [−1, 1]).
        weight: w, DD-Ranking's ``lrs_lambda`` (default 0.5), in [0, 1].
    """
    for name, v in (("IOR", ior_value), ("HLR", hlr_value)):
        if not -1.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be a difference of fractions in [-1, 1], got {v}; use fractions")
    check_fraction(weight, "lrs weight")
    return _squash(weight * ior_value - (1.0 - weight) * hlr_value)


def ars(
    acc_syn_aug: float,
    acc_random_aug: float,
    acc_syn_noaug: float,
    acc_random_noaug: float,
    *,
    weight: float = 0.5,
) -> float:
    """Augmentation-robust score: β = γ·IOR(aug) + (1 − γ)·IOR(no aug) mapped like LRS; γ = ``weight``."""
    check_fraction(weight, "ars weight")
    beta = weight * ior(acc_syn_aug, acc_random_aug) + (1.0 - weight) * ior(acc_syn_noaug, acc_random_noaug)
    return _squash(beta)


def _rounds_error(name: str, n_accs: int, seeds: list[int]) -> ConfigError:
    return ConfigError(f"{name} has {n_accs} accuracies but network seeds {seeds}; evaluate it again "
                       "(one round per seed)")


def by_seed(seeds: Sequence[int], accs: Sequence[float], name: str) -> dict[int, float]:
    """``{network seed: accuracy}`` from parallel lists of rounds (one round per seed).

    Raises:
        ConfigError: the lists differ in length or a seed repeats (``name`` names the evaluation).
    """
    seed_list = [int(s) for s in seeds]
    if len(seed_list) != len(accs) or len(set(seed_list)) != len(seed_list):
        raise _rounds_error(name, len(accs), seed_list)
    return {s: float(a) for s, a in zip(seed_list, accs, strict=True)}


def accs_by_seed(results: Mapping[str, Any], name: str) -> dict[int, float]:
    """Round accuracies of one evaluation ``results.json`` (``rounds`` of ``{acc, seed}``, ``accs``) keyed by
    network seed.

    Raises:
        ConfigError: the rounds do not match ``accs`` or a seed repeats (``name`` names the evaluation).
    """
    rounds = results.get("rounds") or []
    if len(rounds) != len(results["accs"]):
        raise _rounds_error(name, len(results["accs"]), [int(r["seed"]) for r in rounds])
    return by_seed([r["seed"] for r in rounds], [r["acc"] for r in rounds], name)


def _paired(a: Mapping[int, float], a_name: str, b: Mapping[int, float], b_name: str) -> list[tuple[float, float]]:
    """``(a, b)`` accuracy pairs of the same network seed, seeds ascending; a seed on one side only is an error."""
    if set(a) != set(b):
        raise ConfigError(f"{a_name} has rounds with network seeds {sorted(a)} but {b_name} has {sorted(b)}; "
                          "evaluate both under the same evaluation.seed and num_eval")
    return [(a[s], b[s]) for s in sorted(a)]


@dataclass(frozen=True)
class PairedScores:
    """DD-Ranking scores of one evaluated set, per round paired by network seed, as mean and std over rounds.

    ``seeds`` are the network seeds of the rounds, ascending; the ``*_rounds`` tuples are in that order.
    IOR and the random mean/std are ``None`` without a baseline, HLR without hard-label accuracies and a
    full-data accuracy, LRS without both. Stds are population stds (:func:`summarize`). Fractions throughout.
    """

    seeds: tuple[int, ...]
    random_mean: float | None = None
    random_std: float | None = None
    ior: float | None = None
    ior_std: float | None = None
    ior_rounds: tuple[float, ...] | None = None
    hlr: float | None = None
    hlr_std: float | None = None
    hlr_rounds: tuple[float, ...] | None = None
    lrs: float | None = None
    lrs_std: float | None = None
    lrs_rounds: tuple[float, ...] | None = None


def paired_scores(
    syn: Mapping[int, float],
    *,
    baseline: Mapping[int, float] | None = None,
    hard: Mapping[int, float] | None = None,
    full_data_acc: float | None = None,
    lrs_weight: float = 0.5,
    names: tuple[str, str, str] = ("synthetic set", "random baseline", "hard-label evaluation"),
) -> PairedScores:
    """IOR/HLR/LRS of a set from its rounds, each round paired with the rounds of the same network seed.

    Per seed s: IOR_s = syn[s] − baseline[s]; HLR_s = ``full_data_acc`` − hard[s]; LRS_s from IOR_s and HLR_s
    with weight ``lrs_weight``. Each is reported as mean and std over seeds, with the baseline's mean and std.

    Args:
        syn: accuracies of the set under its own recipe, keyed by network seed.
        baseline: accuracies of the random real subset at the same storage budget (:func:`stored_ipc`) and
            recipe, keyed by network seed; ``None``: no IOR (and no LRS).
        hard: the same set's accuracies under hard labels, keyed by network seed (``syn`` itself for a
            hard-label evaluation); ``None`` or ``full_data_acc`` ``None``: no HLR (and no LRS).
        full_data_acc: accuracy of the same recipe trained on the full real data.
        lrs_weight: w of LRS (DD-Ranking's ``lrs_lambda``).
        names: how errors name ``syn``, ``baseline`` and ``hard``.

    Raises:
        ConfigError: a seed on one side of a pairing only (one line naming both seed lists and the fix), or
            an accuracy, ``full_data_acc`` or ``lrs_weight`` that is not a fraction.
    """
    syn_name, base_name, hard_name = names
    seeds = tuple(sorted(syn))
    random_mean = random_std = ior_mean = ior_std = hlr_mean = hlr_std = lrs_mean = lrs_std = None
    iors = hlrs = lrss = None
    if baseline is not None:
        iors = tuple(ior(a, b) for a, b in _paired(syn, syn_name, baseline, base_name))
        random_mean, random_std = summarize(list(baseline.values()))
        ior_mean, ior_std = summarize(iors)
    if hard is not None and full_data_acc is not None:
        hlrs = tuple(hlr(full_data_acc, h) for _, h in _paired(syn, syn_name, hard, hard_name))
        hlr_mean, hlr_std = summarize(hlrs)
        if iors is not None:
            lrss = tuple(lrs(i, h, weight=lrs_weight) for i, h in zip(iors, hlrs, strict=True))
            lrs_mean, lrs_std = summarize(lrss)
    return PairedScores(seeds=seeds, random_mean=random_mean, random_std=random_std, ior=ior_mean, ior_std=ior_std,
                        ior_rounds=iors, hlr=hlr_mean, hlr_std=hlr_std, hlr_rounds=hlrs, lrs=lrs_mean,
                        lrs_std=lrs_std, lrs_rounds=lrss)


def stored_ipc(extra: Mapping[str, Any], per_class: int) -> int:
    """Stored images per class of a synthetic set, from its manifest ``extra`` and the ``per_class`` images it
    trains on: the storage budget its random baseline gets (DD-Ranking compares at the same storage budget, so
    the baseline IPC equals the stored images per class, not the training images they decode into).

    - An NCFM set with ``factor`` > 1 (``extra`` holds ``factor`` and ``stored_ipc``) stores ``stored_ipc``
      mosaics per class that decode into ``per_class`` = factor²·``stored_ipc`` training images: ``stored_ipc``.
    - A pruned set (``extra`` holds ``pruned_from``) keeps decoded crops, each stored as it is: ``per_class``.
    - Any other set stores what it trains on: ``per_class``.
    """
    if int(extra.get("factor", 1)) > 1 and "stored_ipc" in extra and "pruned_from" not in extra:
        return int(extra["stored_ipc"])
    return per_class
