"""Evaluation: recipes, determinism, weighted and soft losses, DD-Ranking metrics, baseline comparison."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddcore.config import load_yaml
from ddcore.errors import ConfigError, DataError
from ddcore.evaluate import (
    BEST_LABEL,
    EvalConfig,
    ars,
    evaluate_random,
    evaluate_set,
    evaluate_with_baseline,
    hlr,
    ior,
    lrs,
    random_subset,
    summarize,
    train_and_evaluate,
)
from ddcore.evaluate.loss import normalise_weights, soft_kl
from ddcore.evaluate.protocol import lr_at, optimizer_for_pass, restarts_optimizer, select_epoch
from ddcore.sampling import TensorSampler
from ddcore.synthetic import SyntheticSet
from flows.config import RunConfig

K = 4


def blobs(per_class: int, seed: int, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Easily separable 1-channel images: class c is bright in quadrant c, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(per_class)
    x = 0.5 * torch.randn(labels.shape[0], 1, size, size, generator=g)
    h = size // 2
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * h : (r + 1) * h, q * h : (q + 1) * h] += 2.0
    return x, labels


def tiny(epochs: int = 6, **overrides: object) -> EvalConfig:
    """The DM recipe on a tiny ConvNet so a run takes well under a second on the CPU."""
    base: dict[str, object] = dict(width=8, depth=2, num_eval=1, batch_size=16)
    base.update(overrides)
    return EvalConfig.dm_protocol(epochs=epochs, **base)


TRAIN = blobs(6, seed=0)
TEST = blobs(20, seed=1)


def test_same_seed_gives_identical_run_and_other_seed_differs() -> None:
    """Two CPU runs with the same seed give identical accuracy and losses; another seed changes the losses."""
    cfg = tiny()
    a = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=3, num_classes=K)
    b = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=3, num_classes=K)
    c = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=4, num_classes=K)
    assert a == b and a.acc == b.acc and a.losses == b.losses
    assert a.losses != c.losses
    assert len(a.losses) == cfg.passes == cfg.epochs + 1 and a.selected_epoch == cfg.passes
    assert a.protocol == cfg.label and 0.0 <= a.acc <= 1.0


def test_equal_weights_reproduce_unweighted_run_exactly() -> None:
    """All-equal per-image weights give exactly the unweighted run; unequal weights change the training."""
    cfg = tiny()
    n = TRAIN[0].shape[0]
    plain = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K)
    equal = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K, weights=torch.full((n,), 0.37))
    assert equal == plain
    skew = torch.linspace(0.1, 3.0, n)
    weighted = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K, weights=skew)
    assert weighted.losses != plain.losses


def test_weight_normalisation_is_mean_one() -> None:
    """Weights are rescaled to mean 1 over the set (so mean(w·ℓ) is on the scale of the plain mean)."""
    assert normalise_weights(torch.full((5,), 2.0)) is None
    w = normalise_weights(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert w is not None
    torch.testing.assert_close(w, torch.tensor([1 / 3, 2 / 3, 1.0, 2.0]))
    assert float(w.mean()) == pytest.approx(1.0)


def test_one_hot_soft_labels_at_t1_match_cross_entropy() -> None:
    """KL to one-hot targets at T=1 equals cross-entropy, so such a run matches the hard-label run."""
    logits = torch.randn(5, K)
    y = torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(soft_kl(F.one_hot(y, K).float(), logits, 1.0),
                               F.cross_entropy(logits, y, reduction="none"))
    cfg = tiny(epochs=3)
    hard = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K)
    soft = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K,
                              soft_labels=F.one_hot(TRAIN[1], K).float())
    assert soft.losses == pytest.approx(hard.losses, rel=1e-4)


def test_separable_data_trains_well_above_chance() -> None:
    """A tiny set of easily separable images trains a ConvNet to far above chance (1/4)."""
    run = train_and_evaluate(*TRAIN, *TEST, config=tiny(epochs=20), seed=0, num_classes=K)
    assert run.acc > 0.6
    assert run.losses[-1] < run.losses[0]


def test_mismatched_image_shapes_are_one_line_data_error() -> None:
    """A 28 px set evaluated on a 32 px test split raises DataError with a single-line message."""
    with pytest.raises(DataError) as info:
        train_and_evaluate(*TRAIN, *blobs(2, seed=1, size=32), config=tiny(), seed=0, num_classes=K)
    assert "\n" not in str(info.value) and "(1, 28, 28)" in str(info.value)
    syn = SyntheticSet(images=TRAIN[0], labels=TRAIN[1], mean=(0.0,), std=(1.0,), num_classes=K, method="t")
    with pytest.raises(DataError):
        evaluate_set(syn, *blobs(2, seed=1, size=32), config=tiny())


def test_dm_and_ncfm_presets_match_the_reference_recipes() -> None:
    """dm_protocol is SGD 0.01/0.9/5e-4, batch 256, DSA, last epoch; ncfm_protocol is labelled best-epoch."""
    dm = EvalConfig.dm_protocol()
    assert (dm.optimizer, dm.lr, dm.momentum, dm.weight_decay, dm.batch_size, dm.epochs) == (
        "sgd", 0.01, 0.9, 5e-4, 256, 1000)
    assert dm.augmentation == "dsa" and dm.selection == "last" and dm.passes == 1001
    nc = EvalConfig.ncfm_protocol()
    assert (nc.optimizer, nc.lr, nc.weight_decay, nc.batch_size, nc.epochs, nc.cutmix) == (
        "adamw", 1e-3, 0.01, 128, 2000, True)
    assert BEST_LABEL in nc.label and BEST_LABEL == "best-epoch (test-set selection, optimistic)"
    with pytest.raises(ConfigError):
        EvalConfig.from_mapping({"epochs": 10, "learning_rate": 0.1})
    with pytest.raises(ConfigError):
        EvalConfig.dm_protocol(selection="best")  # needs test_every
    with pytest.raises(ConfigError):
        EvalConfig.dm_protocol(network="lenet")


def _run_yaml_eval(tmp_path: Path, evaluation: str) -> EvalConfig:
    """The ``evaluation`` section of a run YAML as the flow reads it."""
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\ndata: {{source: {{kind: fashion_mnist}}}}\nevaluation: {evaluation}\n")
    return RunConfig.from_mapping(load_yaml(path), where=str(path)).evaluation


def test_protocol_ncfm_in_yaml_gives_the_ncfm_recipe(tmp_path: Path) -> None:
    """``evaluation: {protocol: ncfm}`` in a run YAML is NCFM's recipe (AdamW 1e-3, 2000 epochs, multistep ×0.5,
    ncfm augmentation + CutMix, tests every 100 epochs, best-epoch selection) labelled best-epoch, not the DM
    defaults under an ncfm label; ``protocol: dm`` and no protocol are the DM recipe."""
    nc = _run_yaml_eval(tmp_path, "{protocol: ncfm}")
    assert nc == EvalConfig.ncfm_protocol()
    assert (nc.optimizer, nc.lr, nc.weight_decay, nc.batch_size, nc.epochs, nc.lr_schedule, nc.lr_decay) == (
        "adamw", 1e-3, 0.01, 128, 2000, "multistep", 0.5)
    assert (nc.augmentation, nc.cutmix, nc.test_every, nc.selection, nc.passes) == ("ncfm", True, 100, "best", 2000)
    assert nc.label == f"ncfm/convnet/2000ep/{BEST_LABEL}"
    assert _run_yaml_eval(tmp_path, "{protocol: dm}") == _run_yaml_eval(tmp_path, "{}") == EvalConfig.dm_protocol()
    with pytest.raises(ConfigError, match="protocol"):
        _run_yaml_eval(tmp_path, "{protocol: idc}")


def test_an_explicit_field_overrides_the_preset_and_the_label_says_so(tmp_path: Path) -> None:
    """Fields set next to ``protocol`` win over the preset, the other preset fields stay, and the label names
    every field set away from the preset (epochs and selection in its head); run count and seed do not count."""
    cfg = _run_yaml_eval(tmp_path, "{protocol: ncfm, epochs: 300, optimizer: sgd, num_eval: 3}")
    assert (cfg.epochs, cfg.optimizer, cfg.num_eval) == (300, "sgd", 3)
    assert (cfg.lr, cfg.batch_size, cfg.augmentation, cfg.selection) == (1e-3, 128, "ncfm", "best")
    assert cfg.label == f"ncfm/convnet/300ep/{BEST_LABEL}; modified: optimizer=sgd"
    last = _run_yaml_eval(tmp_path, "{protocol: ncfm, selection: last, test_every: 0}")
    assert last.label == "ncfm/convnet/2000ep/last-epoch; modified: test_every=0" and BEST_LABEL not in last.label
    demo = EvalConfig.dm_protocol(width=64, num_eval=2, seed=7)
    assert demo.label == "dm/convnet/1000ep/last-epoch; modified: width=64"


def test_lr_schedules() -> None:
    """dm_halfway: lr for passes 0..E//2+1, then ×0.1 with a new optimizer; multistep: ×0.5 at 20/40/60/80 %."""
    cfg = tiny(epochs=10)
    run = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K)
    assert run.lr_per_pass == pytest.approx([0.01] * 7 + [0.001] * 4)
    assert [lr_at(cfg, e) for e in range(11)] == pytest.approx(run.lr_per_pass)
    ms = EvalConfig.ncfm_protocol(epochs=10)
    assert [lr_at(ms, e) for e in range(10)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4, 6.25e-5, 6.25e-5])


def test_dm_halfway_restarts_the_optimizer_once_and_other_schedules_never() -> None:
    """The schedule lives in optimizer_for_pass: dm_halfway hands out a fresh optimizer (momentum reset) on
    pass E//2 + 2 only, and otherwise the same optimizer with lr_at's learning rate."""
    cfg = tiny(epochs=10)
    net = torch.nn.Linear(2, 2)
    opt = optimizer_for_pass(cfg, net, None, 0)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert [e for e in range(cfg.passes) if restarts_optimizer(cfg, e)] == [7]
    for e in range(1, cfg.passes):
        nxt = optimizer_for_pass(cfg, net, opt, e)
        assert (nxt is not opt) == (e == 7) and nxt.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, e))
        if e == 7:
            assert nxt.state_dict()["state"] == {}  # no momentum buffer carried over
        opt = nxt
    ms = EvalConfig.ncfm_protocol(epochs=10)
    assert not any(restarts_optimizer(ms, e) for e in range(ms.passes))


def test_epoch_selection_last_or_earliest_best() -> None:
    """'last' reports the final pass; 'best' the earliest pass with the top test accuracy."""
    accs = {2: 0.3, 4: 0.5, 6: 0.5, 8: 0.4}
    assert select_epoch(tiny(epochs=7), accs) == 8
    assert select_epoch(EvalConfig.ncfm_protocol(epochs=8, test_every=2), accs) == 4


def test_ncfm_protocol_run_selects_best_tested_epoch() -> None:
    """The NCFM recipe (ncfm aug + CutMix + AdamW) runs, tests every k epochs and reports the best of them."""
    cfg = EvalConfig.ncfm_protocol(epochs=6, test_every=2, width=8, depth=2, batch_size=16, num_eval=1)
    run = train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=0, num_classes=K)
    assert sorted(run.test_accs) == [2, 4, 6]
    assert run.acc == max(run.test_accs.values()) and run.test_accs[run.selected_epoch] == run.acc
    assert BEST_LABEL in run.protocol


def test_summarize_population_std() -> None:
    """summarize returns the mean and the population std (ddof 0)."""
    mean, std = summarize([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(math.sqrt(2 / 3) * 0.1)
    assert summarize([0.5]) == (0.5, 0.0)


def test_dd_ranking_metrics_on_hand_computed_examples() -> None:
    """IOR, HLR, LRS and ARS follow docs/methods.md §A4 on fractions; percentages are rejected."""
    assert ior(0.5, 0.3) == pytest.approx(0.2)
    assert hlr(0.8, 0.5) == pytest.approx(0.3)
    # alpha = 0.5*0.2 - 0.5*0.3 = -0.05
    expected = (math.exp(-0.05) - math.exp(-1)) / (math.e - math.exp(-1))
    assert lrs(0.2, 0.3) == pytest.approx(expected) == pytest.approx(0.2481915, abs=1e-6)
    assert lrs(1.0, 0.0, weight=1.0) == pytest.approx(1.0)
    assert lrs(0.0, 1.0, weight=0.0) == pytest.approx(0.0)
    # alpha = 0.7*0.2 - 0.3*0.3 = 0.05
    assert lrs(0.2, 0.3, weight=0.7) == pytest.approx((math.exp(0.05) - math.exp(-1)) / (math.e - math.exp(-1)))
    # beta = 0.5*(0.6-0.4) + 0.5*(0.5-0.45) = 0.125
    assert ars(0.6, 0.4, 0.5, 0.45) == pytest.approx((math.exp(0.125) - math.exp(-1)) / (math.e - math.exp(-1)))
    with pytest.raises(ConfigError):
        ior(48.9, 26.0)


def test_evaluate_set_records_seeds_and_baseline_gives_paired_ior_hlr_lrs() -> None:
    """evaluate_set uses seeds seed+i; the baseline pairs rounds and IOR/HLR/LRS match the metric functions."""
    cfg = tiny(epochs=3, num_eval=2, seed=10)
    syn = SyntheticSet(images=TRAIN[0][::3], labels=TRAIN[1][::3], mean=(0.0,), std=(1.0,), num_classes=K,
                       method="test")
    summary = evaluate_set(syn, *TEST, config=cfg)
    assert summary.seeds == [10, 11] and len(summary.accs) == 2
    assert (summary.mean, summary.std) == summarize(summary.accs)
    real = TensorSampler(*blobs(10, seed=5), num_classes=K, mean=(0.0,), std=(1.0,))
    cmp = evaluate_with_baseline(syn, real, *TEST, config=cfg, random_seed=7, full_data_acc=0.95)
    assert cmp.random_seeds == [7, 8] and cmp.synthetic.accs == summary.accs
    assert all(r.num_train == syn.images.shape[0] for r in cmp.random.runs)
    ior_rounds = cmp.scores.ior_rounds
    assert ior_rounds == pytest.approx([a - b for a, b in zip(cmp.synthetic.accs, cmp.random.accs, strict=True)])
    hlrs = [0.95 - a for a in cmp.synthetic.accs]
    assert cmp.scores.hlr == pytest.approx(summarize(hlrs)[0])
    lrss = [lrs(i, h) for i, h in zip(ior_rounds, hlrs, strict=True)]
    assert cmp.scores.lrs == pytest.approx(summarize(lrss)[0])
    assert cmp.baseline_ipc == 2
    wrong = TensorSampler(*blobs(3, seed=5), num_classes=K, mean=(0.5,), std=(1.0,))
    with pytest.raises(DataError):
        evaluate_with_baseline(syn, wrong, *TEST, config=cfg)



def test_random_baseline_alone_is_the_baselines_rounds_each_a_seeded_subset_and_network() -> None:
    """evaluate_random's round i is the network of seed config.seed + i trained on random_subset(seed =
    random_seed + i), and its rounds are the random rounds evaluate_with_baseline pairs with the set."""
    cfg = tiny(epochs=2, num_eval=2, seed=3)
    real = TensorSampler(*blobs(10, seed=5), num_classes=K, mean=(0.0,), std=(1.0,))
    alone = evaluate_random(real, [2] * K, *TEST, config=cfg, random_seed=40)
    assert alone.seeds == [3, 4]
    x, y = random_subset(real, [2] * K, seed=41)
    one = train_and_evaluate(x, y, *TEST, config=cfg, seed=4, num_classes=K)
    assert alone.accs[1] == one.acc
    syn = SyntheticSet(images=TRAIN[0][::3], labels=TRAIN[1][::3], mean=(0.0,), std=(1.0,), num_classes=K,
                       method="test")
    assert evaluate_with_baseline(syn, real, *TEST, config=cfg, random_seed=40).random.accs == alone.accs
    with pytest.raises(DataError, match="nothing to draw"):
        evaluate_random(real, [0] * K, *TEST, config=cfg)

def test_baseline_of_a_factor_two_set_gets_its_storage_budget() -> None:
    """A set that stores 1 mosaic per class and trains on the 4 crops it decodes into (NCFM factor 2) is
    compared with 1 random real image per class, as the pipeline's baseline (DD-Ranking's storage budget)."""
    cfg = tiny(epochs=1, num_eval=1)
    x, y = TRAIN
    keep = torch.cat([torch.nonzero(y == c).flatten()[:4] for c in range(K)])
    syn = SyntheticSet(images=x[keep], labels=y[keep], mean=(0.0,), std=(1.0,), num_classes=K, method="ncfm",
                       extra={"factor": 2, "stored_ipc": 1})
    real = TensorSampler(*blobs(10, seed=5), num_classes=K, mean=(0.0,), std=(1.0,))
    cmp = evaluate_with_baseline(syn, real, *TEST, config=cfg)
    assert cmp.baseline_ipc == 1 and cmp.random_seeds == [100]
    assert [r.num_train for r in cmp.random.runs] == [K]


@pytest.mark.parametrize("recipe", ["dm", "ncfm"])
def test_killed_evaluation_resumes_to_the_uninterrupted_run(tmp_path, recipe: str) -> None:
    """A run killed after pass 4 (past the DM recipe's halfway lr decay) and resumed from its every-2-passes
    checkpoint ends with the uninterrupted run's losses, test accuracies, learning rates and weights; a
    checkpoint of another seed is ignored."""
    from ddcore.evaluate.train import EpochCheckpoint, train_network

    cfg = tiny() if recipe == "dm" else EvalConfig.ncfm_protocol(epochs=6, width=8, depth=2, num_eval=1,
                                                                   batch_size=16, test_every=2)
    ck = EpochCheckpoint(tmp_path / "ck", every=2)
    net_a, a = train_network(*TRAIN, *TEST, config=cfg, seed=3, num_classes=K)

    class Killed(Exception):
        pass

    def kill_after_4(ep: int, passes: int, loss: float) -> None:
        if ep + 1 == 4:
            raise Killed

    with pytest.raises(Killed):
        train_network(*TRAIN, *TEST, config=cfg, seed=3, num_classes=K, checkpoint=ck, progress=kill_after_4)
    assert (tmp_path / "ck" / "loop.pt").is_file()
    seen: list[int] = []
    net_b, b = train_network(*TRAIN, *TEST, config=cfg, seed=3, num_classes=K, checkpoint=ck,
                             progress=lambda ep, n, loss: seen.append(ep))
    assert seen[0] == 4  # continued after the pass-4 checkpoint
    assert (a.losses, a.test_accs, a.lr_per_pass, a.acc) == (b.losses, b.test_accs, b.lr_per_pass, b.acc)
    assert all(torch.equal(p, q) for p, q in zip(net_a.state_dict().values(), net_b.state_dict().values(),
                                                 strict=True))
    other = train_network(*TRAIN, *TEST, config=cfg, seed=4, num_classes=K, checkpoint=ck)[1]
    assert other == train_and_evaluate(*TRAIN, *TEST, config=cfg, seed=4, num_classes=K)
