"""The pipeline config (``ddflow run CONFIG``): one typed section per stage, validated up front.

``methods`` maps a method name to overrides of its stage config; IPC and seed come from the top level.
Every section is a frozen pydantic model, so an unknown key anywhere is one error line naming it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ddcore.config import StageConfig
from ddcore.data.ingest import IngestConfig
from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.errors import ConfigError
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.teacher import TeacherConfig
from ddcore.latent.ddoq import DDOQConfig
from ddcore.latent.vae import VAEConfig
from ddcore.prune.core import PruneConfig
from flows.runners import RunnerConfig
from tasks.configs import EncodeConfig

DISTILL_METHODS = ("dm", "hdd", "ncfm")
SELECT_METHODS = ("random", "herding")
LATENT_METHODS = ("ddoq", "d4m")
METHODS = DISTILL_METHODS + SELECT_METHODS + LATENT_METHODS


class CoreSetConfig(PruneConfig):
    """Hyperbolic core set before distillation: the methods that match against the kept fraction."""

    methods: list[str] = ["hdd"]


class PostPruneConfig(PruneConfig):
    """Pruning after distillation: each listed method is also distilled at ``ipc / fraction`` and pruned
    back to ``ipc``, so the report shows pruned vs unpruned vs distilled-directly."""

    methods: list[str] = []


class SoftLabelConfig(StageConfig):
    """Soft-label evaluation (methods.md §5.4): a teacher trained on the real data (stage ``train_teacher``)
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
    ipcs: list[int] = [10]
    data: IngestConfig
    methods: dict[str, dict[str, Any]] = {}
    core_set: CoreSetConfig | None = None
    prune: PostPruneConfig | None = None
    soft_labels: SoftLabelConfig | None = None
    vae: VAEConfig = VAEConfig()
    encode: EncodeConfig = EncodeConfig()
    evaluation: EvalConfig = EvalConfig()
    random_baseline: bool = True
    class_groups: int = Field(1, ge=1)
    full_data_acc: float | None = Field(None, ge=0, le=1)
    runner: RunnerConfig = RunnerConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check_methods(self) -> RunConfig:
        for name in self.methods:
            if name not in METHODS:
                raise ConfigError(f"methods: unknown method '{name}'; choose from {', '.join(METHODS)}")
        for ipc in self.ipcs:
            if ipc < 1:
                raise ConfigError(f"ipcs: IPC must be >= 1, got {ipc}")
            for name in self.methods:
                self.method_config(name, ipc)
        for section in (self.core_set, self.prune, self.soft_labels):
            for name in section.methods if section else []:
                if name not in self.methods:
                    raise ConfigError(f"'{name}' is listed for pruning or soft labels but not under methods; "
                                      "add it there")
        return self

    def method_config(self, name: str, ipc: int) -> DistillConfig | BaselineConfig | DDOQConfig:
        """The stage config of method ``name`` at ``ipc`` (top-level seed unless overridden)."""
        over = dict(self.methods.get(name) or {})
        over.setdefault("seed", self.seed)
        where = f"methods.{name}"
        if name in DISTILL_METHODS:
            return DistillConfig.from_mapping({"method": name, "ipc": ipc, **over}, where=where)
        if name in SELECT_METHODS:
            return BaselineConfig.from_mapping({"method": name, "ipc": ipc, **over}, where=where)
        return DDOQConfig.from_mapping({"variant": name, "ipc": ipc, **over}, where=where)

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
