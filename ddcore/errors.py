"""User-facing errors.

Every error a user can cause (bad config, bad data, missing weights, a runner that cannot start)
is raised as a subclass of :class:`DDFlowError`. Its message is one line that names the problem
and the fix; the CLI prints exactly that line (no traceback unless ``--debug``).
"""

from __future__ import annotations


class DDFlowError(Exception):
    """Base class for errors the user can fix. ``str(err)`` is a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(DDFlowError):
    """A configuration file or value is invalid."""


class DataError(DDFlowError):
    """Input data is missing, malformed or inconsistent."""


class ArtifactError(DDFlowError):
    """An artifact is missing, incomplete or fails verification."""


class WeightsError(DDFlowError):
    """Model weights (e.g. a VAE folder) are missing or unusable."""


class DistillationError(DDFlowError):
    """Distillation diverged or cannot proceed (e.g. NaN in synthetic images)."""


class ExportError(DDFlowError):
    """An export cannot be written (target folder in the way, optional package missing)."""
