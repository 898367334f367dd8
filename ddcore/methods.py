"""The method registry: a method's name -> its typed config, its ddcore entry point and the stage that runs it.

A run config names methods by key (``methods: {dm: {...}, ddoq: {...}}``); :func:`get_method` turns a key
into a :class:`Method`, which validates the entry into the method's config type (the key is the
discriminator: it fixes the config's ``method`` / ``variant`` field), tells the plan which extra inputs the
method needs (the latent methods need the ``latents`` and ``vae`` stage outputs, and the ``denoiser`` when
their config asks for the pushforward: :meth:`Method.needs_for`) and whether a run can be split into class
groups, and runs it (:attr:`Method.run`). Adding a method means one module (its config and
entry point) and one :func:`register` line; ``tests/test_method_registry.py`` registers a toy method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddcore.config import StageConfig
from ddcore.errors import ConfigError

if TYPE_CHECKING:
    from ddcore.data.artifact import DatasetArtifact
    from ddcore.sampling import RealSampler
    from ddcore.synthetic import SyntheticSet

LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class MethodInputs:
    """What a method's entry point gets.

    Attributes:
        sampler: the real training images (the whole split, or the core set).
        artifact: the dataset artifact they come from (its meta: classes, shape, mean/std, digest).
        device: torch device for networks and images.
        checkpoint_dir: a folder (local path or fsspec URL) for resumable state (``None``: no checkpoints).
        log: ``(step, metrics)`` progress callback.
        latents, vae, denoiser: the latent artifact URI, the VAE folder and the denoiser folder (methods that
            need them).
    """

    sampler: RealSampler
    artifact: DatasetArtifact | None = None
    device: str = "cpu"
    checkpoint_dir: str | Path | None = None
    log: LogFn | None = None
    latents: str | None = None
    vae: str | None = None
    denoiser: str | None = None


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        name: the key in ``methods:`` (and the set's ``method``).
        config_type: its typed stage config.
        run: ``(inputs, config) -> SyntheticSet``, the ddcore entry point.
        fields: config fields fixed by the name (e.g. ``{"method": "hdd"}``, ``{"variant": "d4m"}``).
        stage: the pipeline stage that runs it.
        needs: stage outputs it always reads besides the dataset (``latents``, ``vae``).
        needs_if: ``config -> extra stage outputs`` a given config reads too (e.g. DDOQ's ``denoiser`` when its
            ``pushforward`` is set); :meth:`needs_for` is the union.
        class_groups: a run can be split per class group and merged into the same set.
        metrics: ``SyntheticSet -> {name: number}``, extra stage metrics of a set (e.g. DDOQ's W2).
    """

    name: str
    config_type: type[StageConfig]
    run: Callable[[MethodInputs, Any], SyntheticSet]
    fields: Mapping[str, Any] = field(default_factory=dict)
    stage: str = "distill"
    needs: frozenset[str] = frozenset()
    class_groups: bool = False
    metrics: Callable[[SyntheticSet], dict[str, float | int]] | None = None
    needs_if: Callable[[Any], frozenset[str]] | None = None

    def needs_for(self, config: StageConfig) -> frozenset[str]:
        """The stage outputs this method reads (besides the dataset) when run with ``config``."""
        return self.needs | (self.needs_if(config) if self.needs_if is not None else frozenset())

    def config(self, entry: Mapping[str, Any], *, ipc: int, seed: int, where: str) -> StageConfig:
        """The typed config of this method at ``ipc``: the run's ``seed`` unless ``entry`` sets one."""
        clash = sorted(k for k in self.fields if k in entry and entry[k] != self.fields[k])
        if clash:
            raise ConfigError(f"{where}: '{clash[0]}' is fixed by the method name ({self.fields[clash[0]]!r}); "
                              "remove it or use that method's key")
        data = {**self.fields, "ipc": ipc, "seed": seed, **entry}
        return self.config_type.from_mapping(data, where=where)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (replacing one of the same name) and return it."""
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (tests of toy methods clean up with this)."""
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The method registered as ``name``; an unknown name is one :class:`ConfigError` line."""
    if name not in _REGISTRY:
        raise ConfigError(f"methods: unknown method '{name}'; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_of(config: StageConfig) -> Method:
    """The method a stage config belongs to (by its ``method`` or ``variant`` field and its type)."""
    name = getattr(config, "method", None) or getattr(config, "variant", None)
    method = _REGISTRY.get(str(name))
    if method is None or not isinstance(config, method.config_type):
        raise ConfigError(f"no registered method takes a {type(config).__name__} named {name!r}; register it")
    return method


# -- the built-in methods ------------------------------------------------------------------------------
def _distill(inputs: MethodInputs, cfg: Any) -> SyntheticSet:
    from ddcore.distill.loop import distill

    return distill(inputs.sampler, cfg, device=inputs.device, checkpoint_dir=inputs.checkpoint_dir, log=inputs.log)


def _select(inputs: MethodInputs, cfg: Any) -> SyntheticSet:
    from ddcore.distill.baselines import select_baseline

    return select_baseline(inputs.sampler, cfg, device=inputs.device)


def _quantize(inputs: MethodInputs, cfg: Any) -> SyntheticSet:
    from ddcore.latent.method import distill_from_latents

    if inputs.artifact is None or inputs.latents is None or inputs.vae is None:
        raise ConfigError(f"{cfg.variant} needs the dataset artifact, the latents and the VAE folder; "
                          "run it through the pipeline, which passes them")
    return distill_from_latents(inputs.artifact, inputs.latents, inputs.vae, cfg, device=inputs.device,
                                denoiser_dir=inputs.denoiser, log=inputs.log)


def _pushforward_needs(cfg: Any) -> frozenset[str]:
    return frozenset({"denoiser"}) if getattr(cfg, "pushforward", None) is not None else frozenset()


def _latent_metrics(sset: SyntheticSet) -> dict[str, float | int]:
    w2 = sset.extra.get("w2") or {}
    return {"empty_cells": int(sset.extra.get("empty_cells", 0)), "w2_weighted": w2.get("mean_w2_weighted", 0.0),
            "w2_uniform": w2.get("mean_w2_uniform", 0.0), "w2_reduction": w2.get("mean_reduction", 0.0),
            "kmeans_seconds": float(sum(sset.extra.get("kmeans_seconds", []) or [0.0])),
            # per-class figures as summaries (the whole table is one MLflow artifact: tasks/distill.per_class_table)
            "quantization_error_mean": float(np.mean(sset.extra.get("quantization_error") or [0.0])),
            "quantization_error_max": float(np.max(sset.extra.get("quantization_error") or [0.0]))}


def _register_builtins() -> None:
    from ddcore.distill.config import BaselineConfig, DistillConfig
    from ddcore.latent.ddoq import DDOQConfig

    for name in ("dm", "hdd", "ncfm"):
        register(Method(name, DistillConfig, _distill, fields={"method": name}, class_groups=True))
    for name in ("random", "herding"):
        register(Method(name, BaselineConfig, _select, fields={"method": name}))
    for name in ("ddoq", "d4m"):
        register(Method(name, DDOQConfig, _quantize, fields={"variant": name}, needs=frozenset({"latents", "vae"}),
                        metrics=_latent_metrics, needs_if=_pushforward_needs))


_register_builtins()
