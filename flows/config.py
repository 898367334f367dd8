"""The pipeline config (``ddflow run CONFIG``): one typed section per stage, validated up front.

``methods`` maps a method name to overrides of its stage config; IPC and seed come from the top level.
Every section is a frozen pydantic model, so an unknown key anywhere is one error line naming it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ddcore.config import StageConfig
from ddcore.data.ingest import IngestConfig
from ddcore.errors import ConfigError
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.teacher import TeacherConfig
from ddcore.latent.denoiser import DenoiserConfig
from ddcore.latent.vae import VAEConfig
from ddcore.methods import get_method
from ddcore.prune.core import PruneConfig
from flows.runners import RunnerConfig
from tasks.configs import EncodeConfig


class CoreSetConfig(PruneConfig):
    """Hyperbolic core set before distillation: the methods that match against the kept fraction."""

    methods: list[str] = ["hdd"]


class PostPruneConfig(PruneConfig):
    """Pruning after distillation: each listed method is also distilled at ``ipc / fraction`` and pruned
    back to ``ipc``, so the report shows pruned vs unpruned vs distilled-directly."""

    methods: list[str] = []


class SoftLabelConfig(StageConfig):
    """Soft-label evaluation (docs/methods.md §5.4): a teacher trained on the real data (stage ``train_teacher``)
    gives KL targets at temperature ``temperature`` on every augmented batch. Each listed method's sets are
    evaluated a second time this way (rows ``<method>+soft``) beside a random baseline under the same
    teacher; the hard-label rows stay, so every method remains comparable. ``temperature`` 20 is D4M's
    script value (its argparse default is 3)."""

    teacher: TeacherConfig = TeacherConfig()
    temperature: float = Field(20.0, gt=0)
    methods: list[str] = ["ddoq", "d4m"]


class TrackingConfig(StageConfig):
    """MLflow: ``uri`` (default ``sqlite:///<root>/mlflow.db``), experiment name, on/off."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "ddflow"


class RunConfig(StageConfig):
    """Top-level pipeline config.

    ``class_groups``: split every DM/HDD/NCFM distillation into this many class-group tasks (one
    device each) merged into one set; 1 = one task per distillation. Evaluation always fans out one
    task per round (seed).
    """

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name under runs/: no "..", no "/"
    seed: int = 0
    device: str = "auto"
    ipcs: list[int] = Field([10], min_length=1)
    data: IngestConfig
    methods: dict[str, dict[str, Any]] = {}
    """Method name (a key of the registry, :mod:`ddcore.methods`) -> overrides of its typed config."""
    core_set: CoreSetConfig | None = None
    prune: PostPruneConfig | None = None
    soft_labels: SoftLabelConfig | None = None
    vae: VAEConfig = VAEConfig()
    encode: EncodeConfig = EncodeConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    """The pushforward's UNet (stage ``train_denoiser``); trained only when a method sets ``pushforward``."""
    evaluation: EvalConfig = EvalConfig()
    random_baseline: bool = True
    class_groups: int = Field(1, ge=1)
    full_data_acc: float | None = Field(None, ge=0, le=1)
    runner: RunnerConfig = RunnerConfig()
    tracking: TrackingConfig = TrackingConfig()
    _typed: dict[tuple[str, int], StageConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_methods(self) -> RunConfig:
        for name in self.methods:
            get_method(name)
        for ipc in self.ipcs:
            if ipc < 1:
                raise ConfigError(f"ipcs: IPC must be >= 1, got {ipc}")
        for section in (self.core_set, self.prune, self.soft_labels):
            for name in section.methods if section else []:
                if name not in self.methods:
                    raise ConfigError(f"'{name}' is listed for pruning or soft labels but not under methods; "
                                      "add it there")
        for name, ipc in self.method_runs():  # each method entry validated once per IPC into its typed config
            self.method_config(name, ipc)
        return self

    def method_runs(self) -> list[tuple[str, int]]:
        """Every ``(method, IPC)`` the run distils: each method at each IPC, plus the larger IPCs post-pruning
        distils from."""
        wanted = [(name, ipc) for ipc in self.ipcs for name in self.methods]
        if self.prune is not None:
            wanted += [(name, self.post_prune_ipc(ipc)) for ipc in self.ipcs for name in self.prune.methods]
        return list(dict.fromkeys(wanted))

    def method_needs(self) -> frozenset[str]:
        """The stage outputs (``latents``, ``vae``, ``denoiser``) some planned method config reads."""
        out: frozenset[str] = frozenset()
        for name, ipc in self.method_runs():
            out |= get_method(name).needs_for(self.method_config(name, ipc))
        return out

    def method_config(self, name: str, ipc: int) -> StageConfig:
        """The typed stage config of method ``name`` at ``ipc`` (the top-level seed unless the entry sets one),
        validated through the method registry (:mod:`ddcore.methods`) once and kept."""
        if (name, ipc) not in self._typed:
            self._typed[name, ipc] = get_method(name).config(self.methods.get(name) or {}, ipc=ipc, seed=self.seed,
                                                             where=f"methods.{name}")
        return self._typed[name, ipc]

    def soft_eval(self) -> EvalConfig:
        """The evaluation recipe of the soft-label rows (``evaluation`` at the section's temperature)."""
        assert self.soft_labels is not None
        return self.evaluation.model_copy(update={"soft_label_temperature": self.soft_labels.temperature})

    def post_prune_ipc(self, ipc: int) -> int:
        """IPC to distil at so that pruning keeps ``ipc`` per class."""
        assert self.prune is not None
        return max(ipc, round(ipc / self.prune.fraction))

    def prune_config(self, section: PruneConfig) -> PruneConfig:
        data = section.model_dump()
        data.pop("methods", None)
        return PruneConfig.model_validate(data)


def load_config(config_path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read, override (``--set key=value``) and validate a pipeline config (one error line on a bad key)."""
    from ddcore.config import apply_overrides, load_yaml

    data = apply_overrides(load_yaml(config_path), overrides or [])
    return RunConfig.from_mapping(data, where=str(config_path))
