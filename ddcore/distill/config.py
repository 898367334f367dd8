"""Typed configs of the distillation methods (reference defaults from methods.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ddcore.config import StageConfig
from ddcore.errors import ConfigError
from ddcore.nets.registry import check_network_name


class HDDOptions(StageConfig):
    """HDD (methods.md §3): curvature parameter k (K = -1/k), loss scale λ, expmap0 radius clamp.

    ``clamp_radius = 10`` is code-faithful (the released code's vendored geoopt); ``None`` is the
    theory-faithful, unclamped map.
    """

    k: float = Field(1.0, gt=0)
    scale: float = Field(20.0, gt=0)
    clamp_radius: float | None = Field(10.0, gt=0)


class PoolOptions(StageConfig):
    """NCFM's pretrained feature-extractor pool (methods.md §4.4); ``num_models = 0`` disables it."""

    num_models: int = Field(0, ge=0)
    epochs: int = Field(60, ge=1)
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0


class NCFMOptions(StageConfig):
    """NCFM (methods.md §4). Reference values: α = β = 0.5, ×300, 4096 frequencies, factor 2."""

    alpha: float = Field(0.5, ge=0)
    beta: float = Field(0.5, ge=0)
    scale: float = Field(300.0, gt=0)
    num_freqs: int = Field(4096, ge=1)
    sampling_net: bool = False
    sampler_kind: Literal["mixture", "code"] = "mixture"
    sampler_group: int = Field(16, ge=1)
    psi_lr: float = 1e-3
    psi_momentum: float = 0.5
    factor: Literal[1, 2] = 2
    calibration_weight: float = Field(1.0, ge=0)
    pool: PoolOptions = PoolOptions()
    weight_decay: float = 5e-4


class DistillConfig(StageConfig):
    """One distillation run.

    Attributes:
        method: ``dm`` | ``hdd`` | ``ncfm``.
        ipc: images per class stored.
        iterations: optimisation steps.
        network, width, depth: the matching ConvNet (a fresh random one per iteration for DM/HDD).
        init: ``real`` (random real images), ``noise``, or ``mix`` (NCFM mosaics of 4 real images).
        lr_img: image learning rate; DM/HDD use SGD with ``momentum``; NCFM uses AdamW
            (reference effective lr 1e-3).
        batch_real: real images per class per iteration.
        dsa_strategy: Siamese augmentation families (DM/HDD); NCFM uses IDC color_crop_cutout.
        class_chunk: classes per forward pass; ``None`` = all classes in one pass (exact with
            instance norm); smaller values trade speed for memory and give the same gradients.
        seed: every random draw derives from it (init, per-iteration nets, batches, augmentation).
        classes: distil only these classes (one class group of a fanned-out run; merged later with
            :func:`~ddcore.distill.merge.merge_class_groups`); ``None`` = every class.
        checkpoint_every: save the loop state every N iterations (0 = never).
        log_every: report the loss every N iterations.
    """

    method: Literal["dm", "hdd", "ncfm"]
    ipc: int = Field(10, ge=1)
    iterations: int = Field(20000, ge=0)
    network: str = "convnet"
    width: int = Field(128, ge=1)
    depth: int | None = None
    init: Literal["real", "noise", "mix"] = "real"
    lr_img: float = Field(1.0, gt=0)
    momentum: float = Field(0.5, ge=0)
    batch_real: int = Field(256, ge=1)
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    class_chunk: int | None = Field(None, ge=1)
    seed: int = 0
    classes: tuple[int, ...] | None = None
    checkpoint_every: int = Field(500, ge=0)
    log_every: int = Field(50, ge=1)
    hdd: HDDOptions = HDDOptions()
    ncfm: NCFMOptions = NCFMOptions()

    @field_validator("network")
    @classmethod
    def _known_network(cls, v: str) -> str:
        return check_network_name(v)

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.init == "mix" and self.method != "ncfm":
            raise ValueError("init 'mix' (multi-formation mosaics) is for method 'ncfm' only")
        if self.classes is not None and (not self.classes or list(self.classes) != sorted(set(self.classes))
                                         or self.classes[0] < 0):
            raise ValueError(f"classes must be a non-empty, sorted list of distinct class indices, got {self.classes}")
        return self

    @classmethod
    def reference(cls, method: str, **overrides: object) -> DistillConfig:
        """Published settings: DM/HDD lr 1, SGD momentum 0.5, 20k iterations, 256 real per class;
        NCFM AdamW lr 1e-3, 1024 real per class, mix init with factor 2."""
        base: dict[str, object] = {"method": method}
        if method == "ncfm":
            base.update(lr_img=1e-3, batch_real=1024, init="mix")
        base.update(overrides)
        return cls.model_validate(base)


def distilled_classes(cfg: DistillConfig, num_classes: int) -> list[int]:
    """The classes ``cfg`` distils: ``cfg.classes`` (checked against ``num_classes``) or all of them."""
    if cfg.classes is None:
        return list(range(num_classes))
    if cfg.classes[-1] >= num_classes:
        raise ConfigError(f"classes: index {cfg.classes[-1]} is out of range for {num_classes} classes")
    return list(cfg.classes)


class BaselineConfig(StageConfig):
    """Selection baselines (methods.md §6): a random real subset, or herding in a ConvNet embedding."""

    method: Literal["random", "herding"]
    ipc: int = Field(10, ge=1)
    seed: int = 0
    network: str = "convnet"
    width: int = Field(128, ge=1)
    depth: int | None = None
    feature_net: Literal["random", "trained"] = "random"
    train_epochs: int = Field(5, ge=1)

    @field_validator("network")
    @classmethod
    def _known_network(cls, v: str) -> str:
        return check_network_name(v)
