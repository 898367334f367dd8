"""ddcore.evaluate.metrics: the one paired-metrics function (rounds paired by network seed), the rounds of a
``results.json`` keyed by seed, and the storage-budget rule that sizes the random baseline."""

from __future__ import annotations

import math

import pytest

from ddcore.errors import ConfigError
from ddcore.evaluate.metrics import accs_by_seed, by_seed, paired_scores, stored_ipc


def _lrs(alpha: float) -> float:
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def test_scores_and_stds_equal_a_hand_computation() -> None:
    """Two rounds (seeds 0, 1), full-data 0.9, w = 0.5: IOR = .1, .2; HLR = .3, .1; α = -.1, .05; each score is
    the mean over rounds with the population std, and the random mean/std are the baseline's."""
    syn, base = {0: 0.6, 1: 0.8}, {0: 0.5, 1: 0.6}
    s = paired_scores(syn, baseline=base, hard=syn, full_data_acc=0.9, lrs_weight=0.5)
    assert s.seeds == (0, 1)
    assert (s.random_mean, s.random_std) == pytest.approx((0.55, 0.05))
    assert s.ior_rounds == pytest.approx((0.1, 0.2)) and (s.ior, s.ior_std) == pytest.approx((0.15, 0.05))
    assert s.hlr_rounds == pytest.approx((0.3, 0.1)) and (s.hlr, s.hlr_std) == pytest.approx((0.2, 0.1))
    l0, l1 = _lrs(0.5 * 0.1 - 0.5 * 0.3), _lrs(0.5 * 0.2 - 0.5 * 0.1)
    assert s.lrs_rounds == pytest.approx((l0, l1))
    assert (s.lrs, s.lrs_std) == pytest.approx(((l0 + l1) / 2, abs(l0 - l1) / 2))
    weighted = paired_scores(syn, baseline=base, hard=syn, full_data_acc=0.9, lrs_weight=0.8)
    assert weighted.lrs_rounds == pytest.approx((_lrs(0.8 * 0.1 - 0.2 * 0.3), _lrs(0.8 * 0.2 - 0.2 * 0.1)))


def test_rounds_pair_by_seed_whatever_their_order() -> None:
    """The same rounds listed in different orders on each side give the same scores: round s of the set meets
    round s of the baseline and of the hard-label evaluation, never the round at the same position."""
    syn = {2: 0.7, 0: 0.5, 1: 0.6}
    base = {1: 0.45, 2: 0.4, 0: 0.3}
    hard = {0: 0.4, 2: 0.6, 1: 0.5}
    s = paired_scores(syn, baseline=base, hard=hard, full_data_acc=0.8)
    assert s.seeds == (0, 1, 2)
    assert s.ior_rounds == pytest.approx((0.2, 0.15, 0.3))
    assert s.hlr_rounds == pytest.approx((0.4, 0.3, 0.2))
    ordered = paired_scores(dict(sorted(syn.items())), baseline=dict(sorted(base.items())),
                            hard=dict(sorted(hard.items())), full_data_acc=0.8)
    assert ordered == s


def test_a_seed_on_one_side_only_is_a_one_line_config_error() -> None:
    """A baseline (or hard-label evaluation) whose network seeds differ from the set's fails with one line naming
    both sides with their seed lists and the fix, instead of pairing what happens to line up."""
    syn = {0: 0.5, 1: 0.6, 2: 0.7}
    with pytest.raises(ConfigError, match=r"eval/dm/2 has rounds with network seeds \[0, 1, 2\] but "
                                          r"baseline/2 has \[0, 1\]; evaluate both under the same "
                                          r"evaluation.seed and num_eval") as info:
        paired_scores(syn, baseline={0: 0.4, 1: 0.5}, names=("eval/dm/2", "baseline/2", "eval/dm/2"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"but eval/dm/2 has \[1, 2, 3\]") as info:
        paired_scores(syn, hard={1: 0.5, 2: 0.5, 3: 0.5}, full_data_acc=0.9,
                      names=("eval/dm+soft/2", "baseline/2/soft", "eval/dm/2"))
    assert "\n" not in str(info.value)


def test_scores_without_their_inputs_are_none() -> None:
    """No baseline: no IOR, random mean or LRS (HLR still); no full-data accuracy or no hard-label rounds: no
    HLR or LRS (IOR still); the hard-label rounds are not even paired then."""
    syn = {0: 0.6, 1: 0.8}
    s = paired_scores(syn, hard=syn, full_data_acc=0.9)
    assert (s.ior, s.ior_std, s.ior_rounds, s.random_mean, s.random_std) == (None,) * 5
    assert s.hlr == pytest.approx(0.2) and (s.lrs, s.lrs_std, s.lrs_rounds) == (None,) * 3
    for kw in ({"hard": syn}, {"full_data_acc": 0.9}, {"hard": {5: 0.1}}):
        t = paired_scores(syn, baseline={0: 0.5, 1: 0.6}, **kw)
        assert t.ior == pytest.approx(0.15) and (t.hlr, t.hlr_std, t.lrs, t.lrs_std) == (None,) * 4


def test_rounds_of_a_results_file_are_keyed_by_seed_one_round_per_seed() -> None:
    """``accs_by_seed`` keys each round's accuracy by its network seed; rounds that do not match ``accs`` or a
    repeated seed is one ConfigError line naming the evaluation (``by_seed`` applies the same rule to lists)."""
    res = {"rounds": [{"acc": 0.5, "seed": 3}, {"acc": 0.7, "seed": 1}], "accs": [0.5, 0.7]}
    assert accs_by_seed(res, "eval/dm/2") == {3: 0.5, 1: 0.7}
    for bad in ({"rounds": [{"acc": 0.5, "seed": 3}], "accs": [0.5, 0.7]},
                {"rounds": [{"acc": 0.5, "seed": 3}, {"acc": 0.7, "seed": 3}], "accs": [0.5, 0.7]}):
        with pytest.raises(ConfigError, match=r"eval/dm/2 has 2 accuracies but network seeds .*one round per seed"):
            accs_by_seed(bad, "eval/dm/2")
    assert by_seed([4, 5], [0.1, 0.2], "x") == {4: 0.1, 5: 0.2}
    with pytest.raises(ConfigError, match="x has 3 accuracies"):
        by_seed([4, 5], [0.1, 0.2, 0.3], "x")


def test_storage_budget_is_the_stored_images_per_class() -> None:
    """The baseline IPC is what a set stores per class: an NCFM factor-2 set's mosaics (1 stored, decoded into
    4 training images), a pruned set's kept decoded crops (each stored as it is), any other set what it trains
    on (also an NCFM set with factor 1)."""
    assert stored_ipc({"factor": 2, "stored_ipc": 1}, 4) == 1
    assert stored_ipc({"factor": 2, "stored_ipc": 1, "pruned_from": "ncfm"}, 2) == 2
    assert stored_ipc({}, 5) == 5
    assert stored_ipc({"factor": 1, "stored_ipc": 5}, 5) == 5
