"""Pipeline stages, one module each (``tasks/<stage>.py``), over the runtime in :mod:`tasks.runtime`.

:func:`get_stage` finds a stage's declaration (:class:`~tasks.runtime.stage.Stage`) by name, importing only
the module that holds it; nothing here imports Prefect or MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.runtime.stage import Stage

#: stage name -> module that declares it
STAGE_MODULES = {
    "ingest": "tasks.ingest", "extract_features": "tasks.features", "train_vae": "tasks.latents",
    "encode_latents": "tasks.latents", "train_denoiser": "tasks.denoiser", "train_teacher": "tasks.teacher",
    "distill": "tasks.distill",
    "merge": "tasks.merge", "prune": "tasks.prune", "evaluate_round": "tasks.evaluate", "evaluate": "tasks.evaluate",
    "baseline_round": "tasks.evaluate", "baseline": "tasks.evaluate", "report": "tasks.report",
}


def get_stage(name: str) -> Stage:
    """The declaration of stage ``name``; an unknown name is one error line listing the known ones."""
    from ddcore.errors import ConfigError
    from tasks.runtime.stage import Stage

    if name not in STAGE_MODULES:
        raise ConfigError(f"unknown stage {name!r}; choose from {', '.join(sorted(STAGE_MODULES))}")
    module = importlib.import_module(STAGE_MODULES[name])
    for value in vars(module).values():
        if isinstance(value, Stage) and value.name == name:
            return value
    raise ConfigError(f"module {STAGE_MODULES[name]} declares no stage {name!r}; declare it with make_stage_task")
