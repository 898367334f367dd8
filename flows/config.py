"""The pipeline config (``ddflow run CONFIG``): one typed section per stage, validated up front.

``methods`` maps a method name to overrides of its stage config; IPC and seed come from the top level.
Every section is a frozen pydantic model, so an unknown key anywhere is one error line naming it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ddcore.config import StageConfig
from ddcore.data.ingestion import IngestConfig
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
    """Hyperbolic core set before distillation (stage ``extract_features``): the listed methods distil from the kept
    fraction of each class instead of the whole train split.

    Attributes:
        methods: the methods (keys of ``methods``) that distil from the core set.
    """

    methods: list[str] = ["hdd"]


class PostPruneConfig(PruneConfig):
    """Pruning after distillation: each listed method is also distilled at ``ipc / fraction`` and pruned
    back to ``ipc``, so the report shows pruned vs unpruned vs distilled-directly.

    Attributes:
        methods: the methods (keys of ``methods``) that are also distilled larger and pruned.
    """

    methods: list[str] = []


class SoftLabelConfig(StageConfig):
    """Soft-label evaluation (docs/methods.md §5.4): a teacher trained on the real data (stage ``train_teacher``)
    gives KL targets at temperature ``temperature`` on every augmented batch. Each listed method's sets are
    evaluated a second time this way (rows ``<method>+soft``) beside a random baseline under the same
    teacher; the hard-label rows stay, so every method remains comparable.

    Attributes:
        teacher: how the teacher is trained on the real train split.
        temperature: T of the KL(teacher_T ‖ student_T) targets; 20 is D4M's script value (its argparse
            default is 3).
        methods: the methods (keys of ``methods``) whose sets are also evaluated under the teacher.
        evaluation: recipe fields (of :class:`~ddcore.evaluate.protocol.EvalConfig`) in which the soft-label rows
            and their baseline differ from the run's ``evaluation``, field by field; e.g. the relabel recipe's
            optimizer ``{optimizer: adamw, lr: 0.001, weight_decay: 0.01, lr_schedule: cosine, cutmix: true}``
            (docs/methods.md §5.4). Empty: the hard-label recipe. The protocol label records every change.
    """

    teacher: TeacherConfig = TeacherConfig()
    temperature: float = Field(20.0, gt=0)
    methods: list[str] = ["ddoq", "d4m"]
    evaluation: dict[str, Any] = {}


class TrackingConfig(StageConfig):
    """MLflow tracking of the run (one parent run, a nested run per stage); the lineage is in ``ref.json`` either way.

    Attributes:
        enabled: log to MLflow; ``false``: no tracking.
        uri: MLflow tracking URI; ``null``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``.
        experiment: MLflow experiment name.
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "ddflow"


class RunConfig(StageConfig):
    """Top-level pipeline config.

    Attributes:
        name: the run's name: its summary is written to ``<root>/runs/<name>/summary.json`` (a plain folder
            name: no ``/``, no ``..``).
        seed: the seed of every method that sets none (the other sections have a ``seed`` of their own).
        device: ``auto`` (the visible GPUs round robin, else the CPU) or a fixed torch device (``cpu``,
            ``cuda:1``).
        ipcs: images per class to distil at; every method runs at each.
        data: the real dataset: where it comes from and how it is ingested (stage ``ingest``).
        core_set: a hyperbolic core set some methods distil from (stage ``extract_features``); ``null``: none.
        prune: post-distillation pruning of some methods' sets (stage ``prune``); ``null``: none.
        soft_labels: soft-label evaluation under a teacher trained on the real data (stage ``train_teacher``);
            ``null``: hard labels only.
        vae: the VAE of the latent methods (DDOQ/D4M, stage ``train_vae``); used only when such a method runs.
        encode: encoding the dataset into VAE latents (stage ``encode_latents``).
        evaluation: the recipe every set (and its random baseline) is evaluated with.
        random_baseline: evaluate a random real subset of the same IPC under the same recipe (for IOR).
        class_groups: split every DM/HDD/NCFM distillation into this many class-group tasks (one device
            each) merged into one set; 1 = one task per distillation. Evaluation always fans out one task per
            round (seed).
        full_data_acc: the accuracy (a fraction) a network trained on the whole real train split reaches, as you
            measured or quote it; the report computes HLR and LRS from it (``null``: none).
        runner: how stage tasks are executed (threads or Ray).
        tracking: MLflow tracking.
    """

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # a folder under runs/: no "/"
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
    _soft_eval: EvalConfig | None = PrivateAttr(default=None)

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
        if self.soft_labels is not None:
            self.soft_eval()
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
        """The evaluation recipe of the soft-label rows: ``evaluation`` with ``soft_labels.evaluation``'s fields
        replaced, at the section's temperature (validated once and kept)."""
        assert self.soft_labels is not None
        if self._soft_eval is None:
            every = {name: getattr(self.evaluation, name) for name in type(self.evaluation).model_fields}
            fields = {**every, **self.soft_labels.evaluation,
                      "soft_label_temperature": self.soft_labels.temperature}
            self._soft_eval = EvalConfig.from_mapping(fields, where="soft_labels.evaluation")
        return self._soft_eval

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
