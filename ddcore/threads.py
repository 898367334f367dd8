"""The torch CPU thread count a stage computes with.

On the CPU, torch splits reductions (convolution weight gradients, normalisation statistics, matrix products)
into one partial sum per thread, so the float32 bytes a training or encoding step produces follow the thread
count: the same stage key gave different VAE and teacher weights under Ray (one thread per worker) and under
the thread runner (all cores). A stage therefore computes with a pinned thread count: ``threads`` of its config
(a field, hence part of its key) where the config has one, :data:`DEFAULT_THREADS` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from pydantic import BaseModel, Field

DEFAULT_THREADS = 2
"""Threads of a stage whose config has no ``threads`` field (a constant: changing it is a code change)."""


class CpuThreads(BaseModel):
    """Mixin: the ``threads`` field of a stage config whose CPU work is heavy enough to want more threads."""

    threads: int = Field(DEFAULT_THREADS, ge=1, le=1024, description=(
        "torch CPU threads the stage computes with; CPU results depend on the count, so it is part of the stage "
        "key (raise it on a many-core CPU machine; it does not matter on a GPU)"))


def stage_threads(config: BaseModel) -> int:
    """``threads`` of ``config`` or of the first nested config that has one (depth first, in field order);
    :data:`DEFAULT_THREADS` when none has."""
    found = _find(config)
    return DEFAULT_THREADS if found is None else found


def _find(config: BaseModel) -> int | None:
    if isinstance(config, CpuThreads):
        return config.threads
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel) and (found := _find(value)) is not None:
            return found
    return None


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count after.

    With torch's OpenMP backend the count belongs to the calling thread, so concurrent stages in a thread pool
    each keep their own.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
