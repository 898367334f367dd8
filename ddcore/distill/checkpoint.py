"""Loop checkpoints: saved atomically, loaded with ``weights_only=True`` (never unpickled).

Randomness in the loops is counter-based: iteration ``i`` draws everything from generators seeded
with :func:`iteration_seed` ``(seed, i, role)`` (:class:`IterationRng`: one shared stream and one per
class). So a checkpoint only needs the iteration, the images and the optimiser (and sampler-net)
state to resume bit-for-bit; the RNG scheme is recorded alongside.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ddcore.errors import ArtifactError

CHECKPOINT_NAME = "loop.pt"


def iteration_seed(seed: int, iteration: int, role: str = "iter") -> int:
    """A 63-bit seed derived from ``(seed, iteration, role)`` (stable across platforms)."""
    digest = hashlib.sha256(f"{seed}:{iteration}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def iteration_generator(seed: int, iteration: int, role: str = "iter") -> torch.Generator:
    """CPU generator for iteration ``iteration`` of a loop seeded with ``seed``."""
    return torch.Generator().manual_seed(iteration_seed(seed, iteration, role))


class IterationRng:
    """The random streams of iteration ``iteration``: one ``shared`` generator (the network, NCFM's
    frequencies: drawn once for all classes) and an independent stream per class (real batch and
    augmentation draws of that class).

    Because a class's stream depends only on ``(seed, iteration, class)``, distilling a group of
    classes on its own draws exactly what the full run draws for those classes, which is what lets a
    distillation fan out per class group and be merged.
    """

    def __init__(self, seed: int, iteration: int) -> None:
        self.seed, self.iteration = seed, iteration
        self.shared = iteration_generator(seed, iteration)

    def for_class(self, c: int) -> torch.Generator:
        """A fresh generator for class ``c`` in this iteration (same draws on every call)."""
        return iteration_generator(self.seed, self.iteration, f"class:{c}")


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts/lists) to ``directory/loop.pt`` atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / CHECKPOINT_NAME
    tmp = d / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final


def load_checkpoint(directory: str | Path | None) -> dict[str, Any] | None:
    """The last saved state, or ``None`` when there is none. Loads with ``weights_only=True``."""
    if directory is None:
        return None
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint must not be trusted
        raise ArtifactError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to restart") from None
