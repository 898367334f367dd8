"""Train one fresh network on a (synthetic) training set under an :class:`EvalConfig` and test it.

Laid out as torchvision's reference scripts are: :func:`train_one_pass` (one epoch), :func:`augment_batch`,
:func:`~ddcore.evaluate.train.top1_accuracy` (evaluation), the schedule and epoch selection in
:mod:`ddcore.evaluate.protocol`, the loss in :mod:`ddcore.evaluate.loss`; :func:`train_network` is the
glue that runs the passes, tests, checkpoints and resumes.

Everything random in a run comes from its integer ``seed``: the initial weights are
``build_network(..., seed=seed)``, and the shuffling and augmentation generators are seeded with
``derive_seed(seed, 'shuffle')`` / ``derive_seed(seed, 'augment')`` (:mod:`ddcore.seeding`), so two
runs with the same seed on the CPU are identical.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddcore.augment.cutmix import CutMixDraw, apply_cutmix, draw_cutmix
from ddcore.augment.dsa import apply, draw_ncfm_eval_params, draw_params
from ddcore.checkpoint import load_state, loop_checkpoint, save_state
from ddcore.evaluate.loss import Targets, check_eval_inputs
from ddcore.evaluate.protocol import EvalConfig, optimizer_for_pass, select_epoch
from ddcore.evaluate.test_data import TestImages, split_batches
from ddcore.seeding import generator

Progress = Callable[[int, int, float], None]
"""Called after every pass with ``(pass_index, num_passes, mean_training_loss)``."""


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where and how often (in passes) an evaluation run saves its state; ``every = 0`` only resumes."""

    directory: str | Path
    every: int = 50


def _run_tag(config: EvalConfig, seed: int, images: torch.Tensor, labels: torch.Tensor) -> str:
    """Identifies a run (recipe, seed, training set) so a checkpoint of another run is never resumed."""
    h = hashlib.sha256(f"{config.digest()}:{seed}:{tuple(images.shape)}".encode())
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class EvalRun:
    """Result of one evaluation run.

    Attributes:
        acc: test top-1 accuracy as a fraction in [0, 1] (at ``selected_epoch``).
        losses: mean training loss of every pass (length ``config.passes``).
        seed: the run's seed (network init; shuffling and augmentation sub-seeds derive from it).
        selected_epoch: number of passes completed when ``acc`` was measured.
        protocol: ``config.label``, e.g. ``dm/convnet/1000ep/last-epoch``.
        test_accs: every test accuracy measured, by passes completed.
        lr_per_pass: learning rate used in every pass.
        num_train: number of training images.
        seconds: wall time of the run (not part of equality).
    """

    acc: float
    losses: list[float]
    seed: int
    selected_epoch: int
    protocol: str
    test_accs: dict[int, float]
    lr_per_pass: list[float]
    num_train: int
    seconds: float = field(default=0.0, compare=False)


@dataclass
class _History:
    losses: list[float] = field(default_factory=list)
    lr_used: list[float] = field(default_factory=list)
    test_accs: dict[int, float] = field(default_factory=dict)


@torch.inference_mode()
def top1_accuracy(
    net: nn.Module, images: TestImages, labels: torch.Tensor, *, device: str | torch.device, batch_size: int
) -> float:
    """Top-1 accuracy (fraction) of ``net`` in eval mode, in batches of ``batch_size`` moved to ``device``
    (``images``: a tensor, or a :class:`~ddcore.evaluate.test_data.StreamedSplit` read batch by batch)."""
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for xb, yb in split_batches(images, labels, batch_size):
        x, y = xb.to(device, torch.float32, non_blocking=True), yb.to(device, non_blocking=True)
        correct = correct + (net(x).argmax(dim=1) == y).sum()
    net.train(was_training)
    return int(correct) / max(1, images.shape[0])  # one read-back per test pass


def augment_batch(x: torch.Tensor, config: EvalConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, CutMixDraw | None]:
    """``config.augmentation`` then (optionally) CutMix on a float ``[B, C, S, S]`` batch, drawing from
    ``generator`` in that order; returns the batch and the CutMix draw (``None`` without CutMix)."""
    b, c, s, _ = x.shape
    if config.augmentation == "dsa":
        x = apply(x, draw_params(config.dsa_strategy, batch=b, image_shape=(c, s, s), generator=generator,
                                 siamese=False))
    elif config.augmentation == "ncfm":
        x = apply(x, draw_ncfm_eval_params(batch=b, image_shape=(c, s, s), generator=generator))
    if not config.cutmix:
        return x, None
    mix = draw_cutmix(b, (s, s), generator=generator, beta=config.cutmix_beta, prob=config.cutmix_prob)
    return apply_cutmix(x, mix), mix


def train_one_pass(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: Targets,
                   config: EvalConfig, *, shuffle: torch.Generator, augment: torch.Generator) -> float:
    """One pass over ``images`` (float32 ``[N, C, S, S]`` on the training device) in shuffled batches of
    ``config.batch_size``; returns the mean training loss of the pass (batch losses weighted by size)."""
    n = images.shape[0]
    order = torch.randperm(n, generator=shuffle)
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, n, config.batch_size):
        idx = order[start : start + config.batch_size].to(images.device, non_blocking=True)
        x, mix = augment_batch(images[idx], config, augment)
        loss = targets.per_image_loss(net(x), x, idx, mix).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total = total + loss.detach() * idx.shape[0]
    return float(total) / n  # one read-back per pass, not per batch


def train_and_evaluate(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: EvalConfig,
    seed: int,
    num_classes: int,
    weights: torch.Tensor | None = None,
    soft_labels: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    test_batch_size: int = 1000,
    checkpoint: EpochCheckpoint | None = None,
) -> EvalRun:
    """Train ``config.network`` from ``seed`` on the training set and return its test accuracy.

    Args:
        train_images: float32 ``[N, C, S, S]`` (normalised); ``train_labels`` int64 ``[N]``.
        test_images: float32 ``[M, C, S, S]``, may stay on the CPU (tested in batches); labels ``[M]``.
        config: the recipe. seed: this run's seed. num_classes: classifier size.
        weights: optional float ``[N]`` per-image loss weights (multiply each image's loss; rescaled to
            mean 1 over the set, so equal weights reproduce the unweighted run exactly).
        soft_labels: optional float ``[N, num_classes]`` probabilities; the loss becomes
            KL(p_T ‖ softmax(z/T)) with T = ``config.soft_label_temperature``.
        teacher: optional network whose ``softmax(logits/T)`` on each augmented batch is the target
            (takes precedence over ``soft_labels``).
        device: where to train. progress: called after every pass.
        test_batch_size: test-time batch size (does not change results).
        checkpoint: save the run's state every ``checkpoint.every`` passes and resume from it (bit-for-bit
            on CPU), so a killed long evaluation continues from its last saved pass.

    Raises:
        DataError: the training and test tensors do not fit together (shape, labels, weights).
    """
    return train_network(train_images, train_labels, test_images, test_labels, config=config, seed=seed,
                         num_classes=num_classes, weights=weights, soft_labels=soft_labels, teacher=teacher,
                         device=device, progress=progress, test_batch_size=test_batch_size,
                         checkpoint=checkpoint)[1]


def train_network(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: EvalConfig,
    seed: int,
    num_classes: int,
    weights: torch.Tensor | None = None,
    soft_labels: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    test_batch_size: int = 1000,
    checkpoint: EpochCheckpoint | None = None,
) -> tuple[nn.Module, EvalRun]:
    """:func:`train_and_evaluate` that also returns the trained network (on ``device``, in training mode).

    Same arguments, same training and the same :class:`EvalRun`; used where the network itself is the
    product (e.g. the soft-label teacher, :mod:`ddcore.evaluate.teacher`).

    Returns:
        ``(net, run)``: the trained network and the same :class:`EvalRun` ``train_and_evaluate`` returns.

    Raises:
        DataError: the training and test tensors do not fit together (shape, labels, weights).
    """
    check_eval_inputs(train_images, train_labels, test_images, test_labels, num_classes=num_classes,
                      weights=weights, soft_labels=soft_labels)
    started = time.perf_counter()
    n, c, s, _ = train_images.shape
    net = config.network_spec.build(channels=c, num_classes=num_classes, image_size=s, seed=seed).to(device)
    net.train()
    images = train_images.to(device, torch.float32)
    targets = Targets.prepare(train_labels, weights=weights, soft_labels=soft_labels, teacher=teacher,
                              temperature=config.soft_label_temperature, device=device)
    shuffle, augment = generator(seed, "shuffle"), generator(seed, "augment")
    history = _History()
    tag = _run_tag(config, seed, train_images, train_labels)
    path = loop_checkpoint(checkpoint.directory) if checkpoint is not None else None
    optimizer, start = _resume(load_state(path), tag, config, net, shuffle, augment, history)
    for ep in range(start, config.passes):
        optimizer = optimizer_for_pass(config, net, optimizer, ep)
        history.lr_used.append(float(optimizer.param_groups[0]["lr"]))
        history.losses.append(train_one_pass(net, optimizer, images, targets, config, shuffle=shuffle,
                                             augment=augment))
        done = ep + 1
        if (config.test_every and done % config.test_every == 0) or done == config.passes:
            history.test_accs[done] = top1_accuracy(net, test_images, test_labels, device=device,
                                                    batch_size=test_batch_size)
        if path is not None and checkpoint is not None and checkpoint.every and done % checkpoint.every == 0 \
                and done < config.passes:
            save_state(path, {
                "tag": tag, "passes": done, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                "shuffle": shuffle.get_state(), "augment": augment.get_state(), "losses": history.losses,
                "lr_used": history.lr_used, "test_accs": [[k, v] for k, v in history.test_accs.items()]})
        if progress is not None:
            progress(ep, config.passes, history.losses[-1])
    selected = select_epoch(config, history.test_accs)
    return net, EvalRun(acc=history.test_accs[selected], losses=history.losses, seed=seed, selected_epoch=selected,
                        protocol=config.label, test_accs=history.test_accs, lr_per_pass=history.lr_used,
                        num_train=n, seconds=time.perf_counter() - started)


def _resume(state: dict[str, Any] | None, tag: str, config: EvalConfig, net: nn.Module, shuffle: torch.Generator,
            augment: torch.Generator, history: _History) -> tuple[torch.optim.Optimizer | None, int]:
    """Restore a saved run of the same recipe, seed and set into the given objects; returns the optimizer
    (``None``: make one for the first pass) and the number of passes already done."""
    if state is None or state.get("tag") != tag:
        return None, 0
    start = int(state["passes"])
    net.load_state_dict(state["net"])
    optimizer = optimizer_for_pass(config, net, None, start - 1)
    optimizer.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle"])
    augment.set_state(state["augment"])
    history.losses, history.lr_used = list(state["losses"]), list(state["lr_used"])
    history.test_accs = {int(k): float(v) for k, v in state["test_accs"]}
    return optimizer, start
