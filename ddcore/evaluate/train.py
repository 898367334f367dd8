"""Train one fresh network on a (synthetic) training set under an :class:`EvalConfig` and test it.

Everything random in a run comes from its integer ``seed``: the initial weights are
``build_network(..., seed=seed)``, and the shuffling and augmentation generators are seeded with
sub-seeds derived from ``seed`` by a hash, so two runs with the same seed on the CPU are identical.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.augment.cutmix import CutMixDraw, apply_cutmix, draw_cutmix
from ddcore.augment.dsa import apply, draw_ncfm_eval_params, draw_params
from ddcore.distill.checkpoint import load_checkpoint, save_checkpoint
from ddcore.errors import DataError
from ddcore.evaluate.protocol import EvalConfig, lr_at
from ddcore.nets.registry import build_network

Progress = Callable[[int, int, float], None]
"""Called after every pass with ``(pass_index, num_passes, mean_training_loss)``."""


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where and how often (in passes) an evaluation run saves its state; ``every = 0`` only resumes."""

    directory: Path
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


def sub_seed(seed: int, role: str) -> int:
    """A 63-bit seed for ``role`` derived from ``seed`` (stable across platforms and versions)."""
    digest = hashlib.sha256(f"{seed}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_eval_inputs(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    weights: torch.Tensor | None = None,
    soft_labels: torch.Tensor | None = None,
) -> None:
    """Raise :class:`DataError` (one line) when the training and test tensors do not fit together."""
    if train_images.ndim != 4 or test_images.ndim != 4:
        raise DataError(
            f"images must be [N, C, H, W]; got train {tuple(train_images.shape)} and test "
            f"{tuple(test_images.shape)}"
        )
    n = train_images.shape[0]
    if n == 0:
        raise DataError("the training set is empty; distil or select at least one image per class")
    if tuple(train_images.shape[1:]) != tuple(test_images.shape[1:]):
        raise DataError(
            f"training images are {tuple(train_images.shape[1:])} but the test split is "
            f"{tuple(test_images.shape[1:])}; evaluate against the test split of the set's source dataset"
        )
    if train_images.shape[2] != train_images.shape[3]:
        raise DataError(f"images must be square, got {tuple(train_images.shape[2:])}; resize them first")
    if train_labels.shape != (n,) or test_labels.shape != (test_images.shape[0],):
        raise DataError("labels must be int64 [N] matching the images; check the label tensors")
    for name, lab in (("training", train_labels), ("test", test_labels)):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise DataError(f"{name} labels fall outside [0, {num_classes}); pass the right num_classes")
    if weights is not None and (
        weights.shape != (n,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())
        or float(weights.sum()) <= 0
    ):
        raise DataError(f"weights must be finite, non-negative, not all zero, shape [{n}]; fix the weights")
    if soft_labels is not None and (
        soft_labels.shape != (n, num_classes) or not bool(torch.isfinite(soft_labels).all())
        or bool((soft_labels < 0).any())
    ):
        raise DataError(
            f"soft labels must be finite non-negative probabilities [{n}, {num_classes}], got shape "
            f"{tuple(soft_labels.shape)}; store probabilities, not logits"
        )


def normalise_weights(weights: torch.Tensor | None) -> torch.Tensor | None:
    """Per-image weights rescaled to mean 1 (float32), or ``None`` when absent or all equal.

    Returning ``None`` for equal weights makes such a run bit-identical to an unweighted one.
    """
    if weights is None or bool((weights == weights.reshape(-1)[0]).all()):
        return None
    w = weights.to(torch.float64)
    return (w / w.mean()).to(torch.float32)


def soft_kl(target: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample KL(target ‖ softmax(logits / T)); ``target`` are probabilities ``[B, K]``."""
    log_q = F.log_softmax(logits / temperature, dim=1)
    return (torch.xlogy(target, target) - target * log_q).sum(dim=1)


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at temperature T: softmax(log p / T) (exact zeros stay zero)."""
    return probs if temperature == 1.0 else torch.softmax(torch.log(probs) / temperature, dim=1)


@torch.inference_mode()
def top1_accuracy(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: str | torch.device, batch_size: int
) -> float:
    """Top-1 accuracy (fraction) of ``net`` in eval mode, in batches of ``batch_size`` moved to ``device``."""
    was_training = net.training
    net.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, torch.float32)
        y = labels[start : start + batch_size].to(device)
        correct += int((net(x).argmax(dim=1) == y).sum())
    net.train(was_training)
    return correct / max(1, images.shape[0])


def _make_optimizer(config: EvalConfig, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.weight_decay)


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
    net = build_network(config.network, channels=c, num_classes=num_classes, image_size=s, seed=seed,
                        width=config.width, depth=config.depth).to(device)
    net.train()
    if teacher is not None:
        teacher.eval()
    x_all = train_images.to(device, torch.float32)
    y_all = train_labels.to(device)
    w_all = normalise_weights(weights)
    w_all = w_all.to(device) if w_all is not None else None
    p_all = temper(soft_labels.to(device, torch.float32), config.soft_label_temperature) \
        if soft_labels is not None and teacher is None else None
    shuffle_gen = torch.Generator().manual_seed(sub_seed(seed, "shuffle"))
    aug_gen = torch.Generator().manual_seed(sub_seed(seed, "augment"))
    lr = config.lr
    optimizer = _make_optimizer(config, net, lr)
    halfway = config.epochs // 2 + 1
    losses: list[float] = []
    lr_used: list[float] = []
    test_accs: dict[int, float] = {}
    shape = (c, s, s)
    start = 0
    tag = _run_tag(config, seed, train_images, train_labels)
    state = load_checkpoint(checkpoint.directory) if checkpoint is not None else None
    if state is not None and state.get("tag") == tag:
        net.load_state_dict(state["net"])
        lr = float(state["lr"])
        optimizer = _make_optimizer(config, net, lr)
        optimizer.load_state_dict(state["optimizer"])
        shuffle_gen.set_state(state["shuffle"])
        aug_gen.set_state(state["augment"])
        start, losses, lr_used = int(state["passes"]), list(state["losses"]), list(state["lr_used"])
        test_accs = {int(k): float(v) for k, v in state["test_accs"]}
    for ep in range(start, config.passes):
        if config.lr_schedule != "dm_halfway":
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, ep)
        lr_used.append(float(optimizer.param_groups[0]["lr"]))
        order = torch.randperm(n, generator=shuffle_gen)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size].to(device)
            x, b = x_all[idx], idx.shape[0]
            if config.augmentation == "dsa":
                x = apply(x, draw_params(config.dsa_strategy, batch=b, image_shape=shape, generator=aug_gen,
                                         siamese=False))
            elif config.augmentation == "ncfm":
                x = apply(x, draw_ncfm_eval_params(batch=b, image_shape=shape, generator=aug_gen))
            mix = None
            if config.cutmix:
                mix = draw_cutmix(b, (s, s), generator=aug_gen, beta=config.cutmix_beta,
                                  prob=config.cutmix_prob)
                x = apply_cutmix(x, mix)
            logits = net(x)
            # per-sample losses already carry the image weights (mean 1 over the set): mean(w·ℓ)
            loss = _per_sample_loss(logits, x, idx, mix, y_all, w_all, p_all, teacher, config).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * b
        losses.append(total / n)
        if config.lr_schedule == "dm_halfway" and ep == halfway:
            lr *= config.lr_decay
            optimizer = _make_optimizer(config, net, lr)  # re-created: momentum is reset, as in DC
        done = ep + 1
        if (config.test_every and done % config.test_every == 0) or done == config.passes:
            test_accs[done] = top1_accuracy(net, test_images, test_labels, device=device,
                                            batch_size=test_batch_size)
        if checkpoint is not None and checkpoint.every and (done % checkpoint.every == 0) and done < config.passes:
            save_checkpoint(checkpoint.directory, {
                "tag": tag, "passes": done, "net": net.state_dict(), "optimizer": optimizer.state_dict(), "lr": lr,
                "shuffle": shuffle_gen.get_state(), "augment": aug_gen.get_state(), "losses": losses,
                "lr_used": lr_used, "test_accs": [[k, v] for k, v in test_accs.items()]})
        if progress is not None:
            progress(ep, config.passes, losses[-1])
    if config.selection == "best":
        selected = max(test_accs, key=lambda k: (test_accs[k], -k))
    else:
        selected = config.passes
    return net, EvalRun(acc=test_accs[selected], losses=losses, seed=seed, selected_epoch=selected,
                        protocol=config.label, test_accs=test_accs, lr_per_pass=lr_used, num_train=n,
                        seconds=time.perf_counter() - started)


def _per_sample_loss(
    logits: torch.Tensor,
    x: torch.Tensor,
    idx: torch.Tensor,
    mix: CutMixDraw | None,
    y_all: torch.Tensor,
    w_all: torch.Tensor | None,
    p_all: torch.Tensor | None,
    teacher: nn.Module | None,
    config: EvalConfig,
) -> torch.Tensor:
    """``[B]`` losses already multiplied by the (mixed) image weights; their mean is the batch loss."""
    t = config.soft_label_temperature
    applied = mix is not None and mix.applied
    lam = mix.lam if mix is not None and applied else 1.0
    partner = idx[mix.perm.to(idx.device)] if mix is not None and applied else idx
    w_a = w_all[idx] if w_all is not None else None
    w_b = w_all[partner] if w_all is not None else None
    if teacher is not None:
        with torch.no_grad():
            target = torch.softmax(teacher(x) / t, dim=1)
        per = soft_kl(target, logits, t)
        if w_a is not None and w_b is not None:
            per = per * (lam * w_a + (1.0 - lam) * w_b)
        return per

    def part(rows: torch.Tensor) -> torch.Tensor:
        if p_all is not None:
            return soft_kl(p_all[rows], logits, t)
        return F.cross_entropy(logits, y_all[rows], reduction="none")

    per_a = part(idx) if w_a is None else part(idx) * w_a
    if not applied:
        return per_a
    per_b = part(partner) if w_b is None else part(partner) * w_b
    return lam * per_a + (1.0 - lam) * per_b
