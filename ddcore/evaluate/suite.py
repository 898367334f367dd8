"""Repeated evaluation of a synthetic set, and the paired random-real-subset baseline (IOR/HLR/LRS).

:func:`evaluate_set` trains ``config.num_eval`` fresh networks (seeds ``config.seed + i``) on a
:class:`~ddcore.synthetic.SyntheticSet` and reports mean ± std. :func:`evaluate_with_baseline` does the
same for a random real subset with the same per-class counts, drawn per round i from seed
``random_seed + i`` and trained with the same seed and recipe as the synthetic round i, and reports
the paired per-round IOR (and HLR/LRS when a full-data accuracy is given). :func:`evaluate_random` is that
baseline alone, for studies that pair it themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ddcore.errors import DataError
from ddcore.evaluate import metrics
from ddcore.evaluate.loss import check_eval_inputs
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.train import EvalRun, Progress, train_and_evaluate
from ddcore.sampling import RealSampler
from ddcore.synthetic import SyntheticSet

OnRun = Callable[[EvalRun], None]
"""Called with every finished :class:`EvalRun` (e.g. to log it)."""


@dataclass
class EvalSummary:
    """Accuracies (fractions) of ``num_eval`` fresh networks on one set, with the seeds that made them."""

    mean: float
    std: float
    accs: list[float]
    seeds: list[int]
    protocol: str
    config_digest: str
    runs: list[EvalRun]


@dataclass
class BaselineComparison:
    """A set and its random-subset baseline under one recipe, and their DD-Ranking scores (fractions).

    Round i of both trains from network seed ``config.seed + i``; the baseline's round i on a random real
    subset drawn from ``random_seeds[i]`` with ``baseline_ipc`` images per class (the set's storage budget,
    :func:`~ddcore.evaluate.metrics.stored_ipc`). ``scores`` come from
    :func:`~ddcore.evaluate.metrics.paired_scores` (IOR always; HLR/LRS with a full-data accuracy and hard labels).
    """

    synthetic: EvalSummary
    random: EvalSummary
    random_seeds: list[int]
    baseline_ipc: int
    scores: metrics.PairedScores
    full_data_acc: float | None = None
    lrs_weight: float = 0.5


BASELINE_SEED = 100
"""First random-subset seed of a baseline: the pipeline's ``BaselineEvalConfig.subset_seed`` default."""


def _summary(runs: list[EvalRun], config: EvalConfig) -> EvalSummary:
    accs = [r.acc for r in runs]
    mean, std = metrics.summarize(accs)
    return EvalSummary(mean=mean, std=std, accs=accs, seeds=[r.seed for r in runs], protocol=config.label,
                       config_digest=config.digest(), runs=runs)


def _check_set(synthetic: SyntheticSet, test_images: torch.Tensor, test_labels: torch.Tensor) -> None:
    check_eval_inputs(synthetic.images, synthetic.labels, test_images, test_labels,
                      num_classes=synthetic.num_classes, weights=synthetic.weights,
                      soft_labels=synthetic.soft_labels)


def evaluate_set(
    synthetic: SyntheticSet,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: EvalConfig,
    use_weights: bool = True,
    use_soft_labels: bool = True,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    on_run: OnRun | None = None,
) -> EvalSummary:
    """Train ``config.num_eval`` networks (seeds ``config.seed + i``) on ``synthetic`` and test them.

    Args:
        synthetic: the set; its ``weights``/``soft_labels`` are used unless disabled.
        test_images, test_labels: the test split, float32 ``[M, C, H, W]`` in the set's normalisation.
        config: the recipe. teacher: optional online soft-label teacher (see ``train_and_evaluate``).

    Raises:
        DataError: the set and the test split do not fit together (e.g. different image shapes).
    """
    _check_set(synthetic, test_images, test_labels)
    runs: list[EvalRun] = []
    for i in range(config.num_eval):
        run = train_and_evaluate(
            synthetic.images, synthetic.labels, test_images, test_labels, config=config, seed=config.seed + i,
            num_classes=synthetic.num_classes, weights=synthetic.weights if use_weights else None,
            soft_labels=synthetic.soft_labels if use_soft_labels else None, teacher=teacher, device=device,
            progress=progress,
        )
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return _summary(runs, config)


def random_subset(
    real: RealSampler, counts: list[int], *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``counts[c]`` real images of each class c drawn without replacement from ``seed``.

    Returns float32 ``[N, C, H, W]`` images and int64 ``[N]`` labels, classes in order.
    """
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c, n in enumerate(counts):
        if n == 0:
            continue
        x = real.sample(c, n, gen)
        images.append(x)
        labels.append(torch.full((x.shape[0],), c, dtype=torch.int64))
    if not images:
        raise DataError("the synthetic set has no labels to match; nothing to draw a random subset for")
    return torch.cat(images), torch.cat(labels)


def subset_seeds(config: EvalConfig, random_seed: int) -> list[int]:
    """The random-subset seeds of a baseline's ``config.num_eval`` rounds: ``random_seed + i`` for round i."""
    return [random_seed + i for i in range(config.num_eval)]


def evaluate_random(
    real: RealSampler,
    counts: list[int],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: EvalConfig,
    random_seed: int = BASELINE_SEED,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    on_run: OnRun | None = None,
) -> EvalSummary:
    """The random-real-subset baseline alone: round i trains network seed ``config.seed + i`` on ``counts[c]``
    real images of each class c drawn from seed ``random_seed + i`` (:func:`random_subset`), under ``teacher``
    if one is given, for ``config.num_eval`` rounds; round i pairs with round i of :func:`evaluate_set`.

    Raises:
        DataError: ``counts`` asks for no image at all.
    """
    runs: list[EvalRun] = []
    for i, subset_seed in enumerate(subset_seeds(config, random_seed)):
        images, labels = random_subset(real, counts, seed=subset_seed)
        run = train_and_evaluate(images, labels, test_images, test_labels, config=config, seed=config.seed + i,
                                 num_classes=real.num_classes, teacher=teacher, device=device, progress=progress)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return _summary(runs, config)


def evaluate_with_baseline(
    synthetic: SyntheticSet,
    real: RealSampler,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: EvalConfig,
    random_seed: int = BASELINE_SEED,
    full_data_acc: float | None = None,
    lrs_weight: float = 0.5,
    use_weights: bool = True,
    use_soft_labels: bool = True,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    on_run: OnRun | None = None,
) -> BaselineComparison:
    """Evaluate ``synthetic`` and random real subsets of its storage budget under ``config``, as the pipeline's
    evaluation, baseline and report stages do.

    Round i trains on the synthetic set and on random subset i (drawn from ``random_seed + i``; the default is
    the pipeline's ``subset_seed``), both from network seed ``config.seed + i``. The subset has the set's
    per-class counts, or ``stored_ipc`` per class for a set that stores fewer images than it trains on (NCFM
    factor 2). IOR_i = acc_syn_i − acc_rdm_i; with ``full_data_acc`` (a fraction) and hard labels (no teacher,
    no soft labels used) also HLR_i = full − acc_syn_i and LRS_i with weight ``lrs_weight``. The ``teacher``
    (if any) is used for both sets; the set's own weights and soft labels only exist for the synthetic set.

    Raises:
        DataError: shapes or normalisation of the set, the real data and the test split disagree.
        ConfigError: ``full_data_acc`` or ``lrs_weight`` is not a fraction.
    """
    _check_set(synthetic, test_images, test_labels)
    shape = tuple(synthetic.images.shape[1:])
    if tuple(real.image_shape) != shape or real.num_classes != synthetic.num_classes:
        raise DataError(
            f"real data is {tuple(real.image_shape)} with {real.num_classes} classes but the set is "
            f"{tuple(synthetic.images.shape[1:])} with {synthetic.num_classes}; use the set's source dataset"
        )
    if not _close(real.mean, synthetic.mean) or not _close(real.std, synthetic.std):
        raise DataError(
            f"real data is normalised with mean {real.mean}/std {real.std} but the set with "
            f"{synthetic.mean}/{synthetic.std}; use the set's source dataset"
        )
    full = metrics.check_fraction(full_data_acc, "full_data_acc") if full_data_acc is not None else None
    metrics.check_fraction(lrs_weight, "lrs_weight")
    syn = evaluate_set(synthetic, test_images, test_labels, config=config, use_weights=use_weights,
                       use_soft_labels=use_soft_labels, teacher=teacher, device=device, progress=progress,
                       on_run=on_run)
    counts = torch.bincount(synthetic.labels, minlength=synthetic.num_classes).tolist()
    ipc = metrics.stored_ipc(synthetic.extra, max(counts))
    if ipc != max(counts):
        counts = [ipc] * synthetic.num_classes
    rdm = evaluate_random(real, counts, test_images, test_labels, config=config, random_seed=random_seed,
                          teacher=teacher, device=device, progress=progress, on_run=on_run)
    syn_accs = metrics.by_seed(syn.seeds, syn.accs, "the synthetic set")
    hard = teacher is None and (synthetic.soft_labels is None or not use_soft_labels)
    scores = metrics.paired_scores(syn_accs, baseline=metrics.by_seed(rdm.seeds, rdm.accs, "the random subsets"),
                                   hard=syn_accs if full is not None and hard else None, full_data_acc=full,
                                   lrs_weight=lrs_weight)
    return BaselineComparison(synthetic=syn, random=rdm, random_seeds=subset_seeds(config, random_seed),
                              baseline_ipc=ipc, scores=scores, full_data_acc=full, lrs_weight=lrs_weight)


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))
