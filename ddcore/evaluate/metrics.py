"""Summary statistics and the DD-Ranking scores (ecosystem.md §A4), on accuracies as FRACTIONS.

- IOR (improvement over random) = Acc(syn) − Acc(random real subset, same IPC, identical recipe).
- HLR (hard-label recovery) = Acc(full real data) − Acc(syn); lower is better.
- α = w·IOR − (1 − w)·HLR, LRS = (e^α − e^−1) / (e − e^−1), mapping α ∈ [−1, 1] onto [0, 1].
- β = γ·[Acc(syn, aug) − Acc(rdm, aug)] + (1 − γ)·[Acc(syn, no aug) − Acc(rdm, no aug)],
  ARS = (e^β − e^−1) / (e − e^−1).

DD-Ranking itself feeds percentages into these formulas, which pushes the "normalised" scores far
outside [0, 1]; every function here rejects values above 1 so that cannot happen silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
