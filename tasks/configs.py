"""Typed stage configs that exist only at the pipeline level (the ddcore ones are reused as they are)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import BASELINE_SEED


class EvaluateConfig(StageConfig):
    """Evaluation stage: ``eval`` recipe; per-image weights and soft labels of the set on/off.

    ``teacher``: the soft-label protocol (docs/methods.md §5.4): the stage's ``teacher`` input (a network
    trained on the real data, stage ``train_teacher``) gives KL(softmax(teacher/T) ‖ softmax(student/T))
    targets on every augmented batch, T = ``eval.soft_label_temperature``; per-image weights still apply.
    ``checkpoint_every``: passes between checkpoints inside a round (a killed round resumes there).
    """

    eval: EvalConfig
    use_weights: bool = True
    use_soft_labels: bool = True
    teacher: bool = False
    checkpoint_every: int = Field(50, ge=0)


class BaselineEvalConfig(StageConfig):
    """The random-subset baseline of one IPC: round i trains on a random real subset drawn from
    ``subset_seed + i`` with network seed ``eval.seed + i`` (the pairing IOR uses)."""

    eval: EvalConfig
    ipc: int = Field(ge=1)
    subset_seed: int = BASELINE_SEED
    teacher: bool = False
    checkpoint_every: int = Field(50, ge=0)


class EvalRoundConfig(StageConfig):
    """One evaluation round of a synthetic set: a fresh network from seed ``evaluate.eval.seed + index``."""

    evaluate: EvaluateConfig
    index: int = Field(ge=0)


class BaselineRoundConfig(StageConfig):
    """One round of the random-subset baseline: subset seed ``subset_seed + index``, network seed
    ``eval.seed + index``."""

    baseline: BaselineEvalConfig
    index: int = Field(ge=0)


class MergeConfig(StageConfig):
    """Merge of one distillation fanned out into ``parts`` class groups (inputs ``part-000``, ...)."""

    parts: int = Field(ge=1)


class EncodeConfig(StageConfig):
    """Latent encoding: batch size and stored dtype of the latents.

    Attributes:
        batch_size: images encoded per VAE forward pass.
        dtype: dtype the latents are stored in.
    """

    batch_size: int = Field(256, ge=1)
    dtype: Literal["float16", "float32"] = "float32"


class ReportRow(StageConfig):
    """One row of a run's results table, as the plan lays it out; fields other than ``label``/``ipc`` name
    report inputs (the ids of the plan nodes that made them).

    ``evaluation``: the set's evaluation aggregate; ``synthetic``: the set; ``baseline``: the random-subset
    baseline the IOR is paired with (the soft-label one for a ``+soft`` row), if any; ``hard``: the
    hard-label evaluation of the same set that HLR reads (``evaluation`` itself for a hard-label row; ``None``:
    no HLR/LRS);
    ``pruned_from``: ``(label, ipc)`` of the row of the set a pruned set was pruned from.
    """

    label: str
    ipc: int = Field(ge=1)
    evaluation: str
    synthetic: str
    baseline: str | None = None
    hard: str | None
    pruned_from: tuple[str, int] | None = None


class ReportConfig(StageConfig):
    """Report stage: the run's name, its rows (built by the plan) and the HLR/LRS settings."""

    run: str
    lrs_weight: float = Field(0.5, ge=0, le=1)
    full_data_acc: float | None = Field(None, ge=0, le=1)
    rows: tuple[ReportRow, ...] = ()
