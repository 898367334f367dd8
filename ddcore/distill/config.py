"""Typed configs of the distillation methods (reference defaults from docs/methods.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ddcore.config import StageConfig
from ddcore.errors import ConfigError
from ddcore.geometry.lorentz import CODE_CLAMP_RADIUS
from ddcore.nets.registry import uses_batch_norm
from ddcore.nets.spec import NamesNetwork
from ddcore.threads import CpuThreads


class HDDOptions(StageConfig):
    """HDD (docs/methods.md §3): curvature parameter k (K = -1/k), loss scale λ, expmap0 radius clamp.

    ``clamp_radius = 10`` (:data:`~ddcore.geometry.lorentz.CODE_CLAMP_RADIUS`) is code-faithful (the released
    code's vendored geoopt); ``None`` is the theory-faithful, unclamped map.

    Attributes:
        k: curvature parameter (K = -1/k).
        scale: λ, the factor of the geodesic distance between the Lorentzian centroids.
        clamp_radius: ``expmap0`` radius clamp; ``None``: unclamped.
    """

    k: float = Field(1.0, gt=0)
    scale: float = Field(20.0, gt=0)
    clamp_radius: float | None = Field(CODE_CLAMP_RADIUS, gt=0)


class PoolOptions(StageConfig):
    """NCFM's pretrained feature-extractor pool (docs/methods.md §4.4); ``num_models = 0`` disables it.

    Attributes:
        num_models: networks trained on the real data (0: no pool, a fresh random network per iteration).
        epochs: training epochs of each pool network.
        lr: SGD learning rate of that training.
        batch_size: images per step of that training.
        seed: seed of the pool networks (network m: ``seed + m``).
    """

    num_models: int = Field(0, ge=0)
    epochs: int = Field(60, ge=1)
    lr: float = 0.01
    batch_size: int = 128
    seed: int = 0


class NCFMOptions(StageConfig):
    """NCFM (docs/methods.md §4). Reference values: α = β = 0.5, ×300, 4096 frequencies, factor 2, L2-normalised
    features (``normalize: false`` is an ablation that feeds raw features to the characteristic function).

    Attributes:
        alpha, beta: weights of the amplitude and phase terms of the characteristic-function discrepancy.
        scale: factor of the loss.
        normalize: L2-normalise the features before the characteristic function.
        num_freqs: frequencies t drawn per iteration.
        sampling_net: draw t from the trained sampling network ψ (it ascends the same loss) instead of N(0, I).
        sampler_kind: ψ's form: ``mixture`` (the paper's) or ``code`` (the released code's).
        sampler_group: frequencies per ψ component.
        psi_lr, psi_momentum: SGD (ascent) of ψ.
        factor: 2: each stored image is a 2x2 mosaic decoded into four images (multi-formation); 1: whole images.
            Unset: 2 with ``init: mix``, else 1.
        calibration_weight: weight of the cross-entropy calibration step on the pool's final model (needs a
            pool); unset: 1 with a pool, else 0.
        pool: the pretrained feature-extractor pool.
        weight_decay: AdamW weight decay of the synthetic images.
    """

    alpha: float = Field(0.5, ge=0)
    beta: float = Field(0.5, ge=0)
    scale: float = Field(300.0, gt=0)
    normalize: bool = True
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

    @model_validator(mode="before")
    @classmethod
    def _calibration_follows_pool(cls, data: object) -> object:
        """Unset ``calibration_weight`` is 1 (the reference) with a pool and 0 without one."""
        if isinstance(data, dict) and "calibration_weight" not in data:
            pool = data.get("pool")
            num_models = pool.get("num_models", 0) if isinstance(pool, dict) else getattr(pool, "num_models", 0)
            data = {**data, "calibration_weight": 1.0 if num_models else 0.0}
        return data

    @model_validator(mode="after")
    def _check(self) -> NCFMOptions:
        if self.calibration_weight > 0 and self.pool.num_models == 0:
            raise ValueError("calibration_weight > 0 needs the pretrained pool (the CE step uses its final "
                             "models); set ncfm.pool.num_models > 0 or ncfm.calibration_weight: 0")
        return self


#: NCFM's reference settings, used for the keys a config leaves unset (DM/HDD keep the field defaults).
NCFM_DEFAULTS: dict[str, object] = {"lr_img": 1e-3, "batch_real": 1024, "init": "mix"}


class DistillConfig(StageConfig, NamesNetwork, CpuThreads):
    """One distillation run.

    Attributes:
        method: ``dm`` | ``hdd`` | ``ncfm``.
        ipc: images per class stored.
        iterations: optimisation steps.
        network, width, depth: the matching ConvNet (a fresh random one per iteration for DM/HDD).
        init: ``real`` (random real images), ``noise``, or ``mix`` (NCFM mosaics of 4 real images).
        lr_img: image learning rate; DM/HDD use SGD with ``momentum``; NCFM uses AdamW
            (reference effective lr 1e-3).
        momentum: SGD momentum of the image optimiser (DM/HDD).
        batch_real: real images per class per iteration.
        dsa_strategy: Siamese augmentation families (DM/HDD); NCFM uses IDC color_crop_cutout.
        class_chunk: classes per forward pass; ``None`` = all classes in one pass (exact with
            instance norm or no norm); smaller values trade speed for memory and give the same
            gradients. Every class's loss touches only that class's images and the optimisers act
            per element, so ``class_chunk: 1`` is per-class stepping in effect (one pass and one
            backward per class, gradients freed in between) with the update of a single step.
            Batch-norm networks (``*-bn``) mix the classes of a pass, so they need ``class_chunk: 1``
            (per-class passes, as in the reference code).
        seed: every random draw derives from it (init, per-iteration nets, batches, augmentation).
        classes: distil only these classes (one class group of a fanned-out run; merged later with
            :func:`~ddcore.distill.merge.merge_class_groups`); ``None`` = every class.
        checkpoint_every: save the loop state every N iterations (0 = never).
        log_every: report the loss every N iterations.
        hdd: HDD's options (``method: hdd``).
        ncfm: NCFM's options (``method: ncfm``).
        real_cache_mb: memory budget (MB of uint8 pixels) of the decoded real images the loop draws from
            (:class:`~ddcore.data.loader.ArtifactSampler`): classes beyond it are read per draw. On a GPU the
            cache is in device memory (``ArtifactSampler.on``). The same images either way, so it is no part of
            the config's identity (stage key).

    For ``method: ncfm`` the keys ``lr_img``, ``batch_real`` and ``init`` default to NCFM's reference
    values (:data:`NCFM_DEFAULTS`), and an unset ``ncfm.factor`` is 2 with ``init: mix`` and 1
    otherwise; ``factor: 2`` with ``init: real`` (each real image cut into four) is refused.
    """

    method: Literal["dm", "hdd", "ncfm"]
    ipc: int = Field(10, ge=1)
    iterations: int = Field(20000, ge=1)
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
    real_cache_mb: float = Field(1536.0, ge=0, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: object) -> object:
        """Fill NCFM's reference values for the keys an ``ncfm`` config leaves unset."""
        if not isinstance(data, dict) or data.get("method") != "ncfm":
            return data
        data = {**NCFM_DEFAULTS, **data}
        opts = data.get("ncfm")
        if opts is None or isinstance(opts, dict):
            opts = dict(opts or {})
            opts.setdefault("factor", 2 if data["init"] == "mix" else 1)
            data["ncfm"] = opts
        return data

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.init == "mix" and self.method != "ncfm":
            raise ValueError("init 'mix' (multi-formation mosaics) is for method 'ncfm' only")
        if self.method == "ncfm" and self.init == "real" and self.ncfm.factor == 2:
            raise ValueError("ncfm.factor 2 decodes each stored image as a 2x2 mosaic, but init 'real' stores "
                             "whole real images; use init: mix or ncfm.factor: 1")
        if uses_batch_norm(self.network) and self.class_chunk != 1:
            raise ValueError(f"network '{self.network}' uses batch norm, which mixes the classes of a batched "
                             "pass; set class_chunk: 1 (per-class passes) or use an instance-norm network")
        if self.classes is not None and (not self.classes or list(self.classes) != sorted(set(self.classes))
                                         or self.classes[0] < 0):
            raise ValueError(f"classes must be a non-empty, sorted list of distinct class indices, got {self.classes}")
        return self

    @classmethod
    def reference(cls, method: str, **overrides: object) -> DistillConfig:
        """Published settings: DM/HDD lr 1, SGD momentum 0.5, 20k iterations, 256 real per class;
        NCFM AdamW lr 1e-3, 1024 real per class, mix init with factor 2 (the defaults of each method)."""
        return cls.model_validate({"method": method, **overrides})


def distilled_classes(cfg: DistillConfig, num_classes: int) -> list[int]:
    """The classes ``cfg`` distils: ``cfg.classes`` (checked against ``num_classes``) or all of them."""
    if cfg.classes is None:
        return list(range(num_classes))
    if cfg.classes[-1] >= num_classes:
        raise ConfigError(f"classes: index {cfg.classes[-1]} is out of range for {num_classes} classes")
    return list(cfg.classes)


class BaselineConfig(StageConfig, NamesNetwork):
    """Selection baselines (docs/methods.md §6): a random real subset, or herding in a ConvNet embedding.

    Attributes:
        method: ``random`` | ``herding``.
        ipc: images per class selected.
        seed: seed of the random pick (and of herding's network).
        network, width, depth: herding's embedding ConvNet.
        feature_net: herding embeds with a ``random`` (seeded) network or one ``trained`` on the real data.
        train_epochs: epochs of that training (``feature_net: trained``).
    """

    method: Literal["random", "herding"]
    ipc: int = Field(10, ge=1)
    seed: int = 0
    network: str = "convnet"
    width: int = Field(128, ge=1)
    depth: int | None = None
    feature_net: Literal["random", "trained"] = "random"
    train_epochs: int = Field(5, ge=1)
