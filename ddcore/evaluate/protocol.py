"""The evaluation recipe: how a fresh network is trained on a (synthetic) set and scored.

Two named recipes, never to be mixed in one table (docs/methods.md §8.1):

- :meth:`EvalConfig.dm_protocol` — the DC/DSA/DM "ConvNet protocol" (§1.4): SGD lr 0.01, momentum 0.9,
  wd 5e-4, batch 256, 1000 epochs run as 1001 passes like the reference loop, lr ×0.1 after pass
  epochs//2 + 1 with the optimizer re-created (momentum reset), per-sample DSA, last-epoch accuracy.
- :meth:`EvalConfig.ncfm_protocol` — NCFM's recipe (§4.6): AdamW lr 1e-3 wd 0.01, batch 128,
  2000 epochs, lr ×0.5 at 20/40/60/80 %, flip + color + one of crop/scale/rotate per sample, CutMix
  (β 1, p 0.5), tested every 100 epochs and reported at the best test epoch (optimistic).

``protocol`` selects the preset: every field a config does not set comes from the named recipe
(``evaluation: {protocol: ncfm}`` in a run YAML is the NCFM recipe), and fields it sets override it.
The label names the protocol, network, epochs, epoch selection and every other field that differs
from the preset, so a recorded number always says exactly which recipe gave it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ddcore.augment.dsa import DEFAULT_STRATEGY, parse_strategy
from ddcore.config import StageConfig
from ddcore.errors import ConfigError
from ddcore.nets.spec import NamesNetwork
from ddcore.threads import CpuThreads

BEST_LABEL = "best-epoch (test-set selection, optimistic)"
LAST_LABEL = "last-epoch"

PRESETS: dict[str, dict[str, Any]] = {
    "dm": dict(
        network="convnet", epochs=1000, dc_extra_pass=True, optimizer="sgd", lr=0.01, momentum=0.9,
        weight_decay=5e-4, batch_size=256, lr_schedule="dm_halfway", lr_decay=0.1, augmentation="dsa",
        dsa_strategy=DEFAULT_STRATEGY, cutmix=False, num_eval=5, test_every=0, selection="last",
    ),
    "ncfm": dict(
        network="convnet", epochs=2000, dc_extra_pass=False, optimizer="adamw", lr=1e-3, momentum=0.9,
        weight_decay=0.01, batch_size=128, lr_schedule="multistep", lr_decay=0.5, augmentation="ncfm",
        dsa_strategy=DEFAULT_STRATEGY, cutmix=True, cutmix_beta=1.0, cutmix_prob=0.5, num_eval=10,
        test_every=100, selection="best",
    ),
}
"""The fields each named protocol fixes (docs/methods.md §1.4 and §4.6); unlisted fields keep their defaults."""

_LABEL_FIELDS = ("protocol", "network", "epochs", "selection")  # spelled out in the label's head
_RUN_FIELDS = ("num_eval", "seed")  # how many networks and their seeds, recorded beside every number


class EvalConfig(StageConfig, NamesNetwork, CpuThreads):
    """Training-and-test recipe for one evaluation run (see the module docstring for the two presets).

    Fields:
        protocol: the named recipe (``dm`` or ``ncfm``, :data:`PRESETS`) that fills every field not set.
        network: a name from :data:`ddcore.nets.NETWORK_NAMES`; ``depth``/``width`` as for ConvNet.
        width, depth: the network's width (channels) and depth (``None``: the name's depth, 3 for ``convnet``).
        epochs: training epochs E. ``dc_extra_pass`` runs E + 1 passes, as ``range(Epoch + 1)`` does.
        dc_extra_pass: run E + 1 passes (the DC/DSA/DM reference loop) instead of E.
        optimizer: ``sgd`` (uses ``momentum``) or ``adamw``; ``lr``, ``weight_decay`` for both.
        lr, momentum, weight_decay: optimizer hyper-parameters (``momentum``: SGD only).
        batch_size: images per step.
        lr_schedule: ``dm_halfway`` (×``lr_decay`` after pass E//2 + 1, optimizer re-created),
            ``multistep`` (×``lr_decay`` at 20/40/60/80 % of E), ``cosine`` (per epoch) or ``constant``.
        lr_decay: the factor of ``dm_halfway`` and ``multistep``.
        augmentation: ``dsa`` (one family of ``dsa_strategy`` per batch, per-sample parameters),
            ``ncfm`` (flip + color + one of crop/scale/rotate, per sample) or ``none``.
        dsa_strategy: the DSA families, ``_``-separated (e.g. ``color_crop_cutout_flip_scale_rotate``).
        cutmix, cutmix_beta, cutmix_prob: CutMix after augmentation.
        num_eval: number of fresh networks; run i uses seed ``seed + i``.
        seed: seed of the first network (and of its shuffling and augmentation).
        test_every: test every this many epochs (0: only at the end); needed by ``selection='best'``.
        selection: ``last`` (accuracy after the last epoch) or ``best`` (max over tests: optimistic).
        soft_label_temperature: T of the KL(teacher_T ‖ student_T) loss used when soft labels or a
            teacher are given (no T² factor, as in SRe2L/D4M); hard labels use cross-entropy.
        test_memory_mb: a test split taking at most this many MB as float32 is held in memory; a larger one is
            streamed batch by batch (:mod:`ddcore.evaluate.test_data`). Same accuracy either way, so it is no
            part of the config's identity (stage key).
        loader_workers: processes decoding a streamed test split (no part of the config's identity either).
    """

    protocol: Literal["dm", "ncfm"] = "dm"
    network: str = "convnet"
    depth: int | None = Field(default=None, ge=1)
    width: int = Field(default=128, ge=1)
    epochs: int = Field(default=1000, ge=1)
    dc_extra_pass: bool = True
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    lr_schedule: Literal["dm_halfway", "multistep", "cosine", "constant"] = "dm_halfway"
    lr_decay: float = Field(default=0.1, gt=0, le=1)
    augmentation: Literal["dsa", "ncfm", "none"] = "dsa"
    dsa_strategy: str = DEFAULT_STRATEGY
    cutmix: bool = False
    cutmix_beta: float = Field(default=1.0, ge=0)
    cutmix_prob: float = Field(default=0.5, ge=0, le=1)
    num_eval: int = Field(default=5, ge=1)
    seed: int = Field(default=0, ge=0)
    test_every: int = Field(default=0, ge=0)
    selection: Literal["last", "best"] = "last"
    soft_label_temperature: float = Field(default=1.0, gt=0)
    test_memory_mb: float = Field(default=1024.0, ge=0, exclude=True)
    loader_workers: int = Field(default=2, ge=0, le=64, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """Fields not given come from the preset of ``protocol`` (default ``dm``); given fields win."""
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(data.get("protocol", "dm"))
        return data if preset is None else {**preset, **data}  # an unknown protocol fails its Literal check

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        try:
            parse_strategy(self.dsa_strategy)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.selection == "best" and self.test_every == 0:
            raise ValueError("selection 'best' needs test_every > 0 (the epochs to choose among)")
        return self

    @property
    def passes(self) -> int:
        """Number of training passes over the set: ``epochs + 1`` with ``dc_extra_pass``."""
        return self.epochs + 1 if self.dc_extra_pass else self.epochs

    def preset_changes(self) -> dict[str, Any]:
        """Recipe fields whose value differs from the named protocol's preset (``num_eval``/``seed`` left out)."""
        preset = type(self).model_validate({"protocol": self.protocol})
        skip = _LABEL_FIELDS + _RUN_FIELDS
        return {k: v for k, v in self.model_dump(mode="json").items()
                if k not in skip and v != getattr(preset, k)}

    @property
    def label(self) -> str:
        """Protocol label recorded with every accuracy, e.g. ``dm/convnet/1000ep/last-epoch``.

        Fields set away from the preset follow as ``; modified: key=value, ...`` (e.g. an NCFM recipe run
        with SGD reads ``ncfm/convnet/2000ep/best-epoch (...); modified: optimizer=sgd``).
        """
        sel = BEST_LABEL if self.selection == "best" else LAST_LABEL
        head = f"{self.protocol}/{self.network}/{self.epochs}ep/{sel}"
        changes = self.preset_changes()
        return head + ("; modified: " + ", ".join(f"{k}={v}" for k, v in changes.items()) if changes else "")

    @classmethod
    def dm_protocol(cls, epochs: int = 1000, **overrides: Any) -> EvalConfig:
        """The DC/DSA/DM recipe (docs/methods.md §1.4); ``overrides`` replace single fields (e.g. num_eval)."""
        return cls.from_mapping({"protocol": "dm", "epochs": epochs, **overrides}, where="eval (dm protocol)")

    @classmethod
    def ncfm_protocol(cls, epochs: int = 2000, **overrides: Any) -> EvalConfig:
        """NCFM's recipe (docs/methods.md §4.6); best-epoch selection on the test set is labelled as such."""
        return cls.from_mapping({"protocol": "ncfm", "epochs": epochs, **overrides}, where="eval (ncfm protocol)")


def lr_at(config: EvalConfig, epoch: int) -> float:
    """Learning rate of pass ``epoch`` (0-based) under ``config.lr_schedule``.

    ``dm_halfway``: ``lr`` up to pass E//2 + 1 inclusive, ``lr·lr_decay`` after (the optimizer is also
    re-created then, see :func:`optimizer_for_pass`); ``multistep``: ×``lr_decay`` at 20/40/60/80 % of E;
    ``cosine``: per pass from ``lr`` to 0 at E; ``constant``: ``lr``.
    """
    e = config.epochs
    if config.lr_schedule == "dm_halfway":
        return config.lr * (config.lr_decay if epoch > e // 2 + 1 else 1.0)
    if config.lr_schedule == "multistep":
        milestones = [int(e * f) for f in (0.2, 0.4, 0.6, 0.8)]
        return config.lr * config.lr_decay ** sum(1 for m in milestones if m <= epoch)
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(epoch, e) / e))
    return config.lr


def make_optimizer(config: EvalConfig, net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW over ``net``'s parameters at ``lr`` with ``weight_decay``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.weight_decay)


def restarts_optimizer(config: EvalConfig, epoch: int) -> bool:
    """Whether pass ``epoch`` starts with a fresh optimizer: the DC/DM loop re-creates it (momentum reset)
    when it decays the lr, i.e. on the first pass after E//2 + 1 (docs/methods.md §1.4)."""
    return config.lr_schedule == "dm_halfway" and epoch == config.epochs // 2 + 2


def optimizer_for_pass(config: EvalConfig, net: nn.Module, optimizer: torch.optim.Optimizer | None,
                       epoch: int) -> torch.optim.Optimizer:
    """The optimizer of pass ``epoch`` with its lr set to :func:`lr_at`; the whole schedule lives here.

    A new one is made for the first pass (``optimizer`` ``None``) and where :func:`restarts_optimizer`
    says so; otherwise ``optimizer`` is returned with its learning rate updated.
    """
    lr = lr_at(config, epoch)
    if optimizer is None or restarts_optimizer(config, epoch):
        return make_optimizer(config, net, lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


def select_epoch(config: EvalConfig, test_accs: dict[int, float]) -> int:
    """Passes completed at the reported accuracy: the last pass, or (``selection='best'``) the earliest
    pass with the highest test accuracy (optimistic: chosen on the test set, and labelled so)."""
    if config.selection == "best":
        return max(test_accs, key=lambda k: (test_accs[k], -k))
    return config.passes
