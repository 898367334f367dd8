"""What an evaluation run minimises, and the checks on what it is given.

The loss of a batch is the mean of per-image losses, each multiplied by its image's weight (weights are
rescaled to mean 1 over the set). An image's loss is cross-entropy on its hard label, or KL(p_T ‖
softmax(z/T)) against stored soft labels or a teacher's tempered output; under CutMix both images of
a pair contribute with the mixing ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.augment.cutmix import CutMixDraw
from ddcore.errors import DataError


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


@dataclass(frozen=True)
class Targets:
    """What each training image is fitted to, held on the training device.

    Attributes:
        labels: int64 ``[N]`` hard labels.
        weights: float32 ``[N]`` per-image weights of mean 1, or ``None`` (all equal).
        soft: float32 ``[N, K]`` tempered soft labels, or ``None``; unused when ``teacher`` is set.
        teacher: a network whose tempered softmax on each augmented batch is the target, or ``None``.
        temperature: T of the KL loss.
    """

    labels: torch.Tensor
    weights: torch.Tensor | None
    soft: torch.Tensor | None
    teacher: nn.Module | None
    temperature: float

    @classmethod
    def prepare(cls, labels: torch.Tensor, *, weights: torch.Tensor | None, soft_labels: torch.Tensor | None,
                teacher: nn.Module | None, temperature: float, device: str | torch.device) -> Targets:
        """Move the targets to ``device``: weights rescaled to mean 1, soft labels tempered (unless a teacher)."""
        w = normalise_weights(weights)
        p = temper(soft_labels.to(device, torch.float32), temperature) \
            if soft_labels is not None and teacher is None else None
        if teacher is not None:
            teacher.eval()
        return cls(labels.to(device), w.to(device) if w is not None else None, p, teacher, temperature)

    def per_image_loss(self, logits: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
                       mix: CutMixDraw | None) -> torch.Tensor:
        """``[B]`` losses of the batch ``idx`` (after augmentation ``x``, CutMix ``mix``), already
        multiplied by the (mixed) image weights; their mean is the batch loss."""
        t = self.temperature
        applied = mix is not None and mix.applied
        lam = mix.lam if mix is not None and applied else 1.0
        partner = idx[mix.perm.to(idx.device, non_blocking=True)] if mix is not None and applied else idx
        w_a = self.weights[idx] if self.weights is not None else None
        w_b = self.weights[partner] if self.weights is not None else None
        if self.teacher is not None:
            with torch.no_grad():
                target = torch.softmax(self.teacher(x) / t, dim=1)
            per = soft_kl(target, logits, t)
            if w_a is not None and w_b is not None:
                per = per * (lam * w_a + (1.0 - lam) * w_b)
            return per

        def part(rows: torch.Tensor) -> torch.Tensor:
            if self.soft is not None:
                return soft_kl(self.soft[rows], logits, t)
            return F.cross_entropy(logits, self.labels[rows], reduction="none")

        per_a = part(idx) if w_a is None else part(idx) * w_a
        if not applied:
            return per_a
        per_b = part(partner) if w_b is None else part(partner) * w_b
        return lam * per_a + (1.0 - lam) * per_b
