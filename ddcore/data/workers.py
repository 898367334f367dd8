"""Worker processes for CPU-bound ingest work (shard scanning, image decoding), one pool per ingest.

Workers are started with ``spawn``: an ingest may run inside a stage thread of a process that also runs Prefect's
and MLflow's threads, and a forked child would inherit their locks. Results come back in submission order, so the
artifact an ingest writes does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from ddcore.errors import DDFlowError


class _Serial:
    """The pool of ``workers=1``: everything runs in this process."""

    @staticmethod
    def map(fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return map(fn, *iterables)


@contextmanager
def in_workers(workers: int, *, chunksize: int = 1) -> Iterator[Any]:
    """A pool with ``map(fn, *iterables)`` (ordered): this process for ``workers <= 1`` (lazily), else ``workers``
    spawned processes (``fn`` must be a module-level function) that take tasks ``chunksize`` at a time."""
    if workers <= 1:
        yield _Serial()
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield _Pool(pool, chunksize)


class _Pool:
    """A process pool whose ``map`` sends tasks in chunks (one round trip per chunk, not per item)."""

    def __init__(self, pool: ProcessPoolExecutor, chunksize: int) -> None:
        self.pool, self.chunksize = pool, chunksize

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        try:
            yield from self.pool.map(fn, *iterables, chunksize=self.chunksize)
        except BrokenProcessPool:
            raise DDFlowError("an ingest worker process died (killed for memory, or started from a script without "
                              "an `if __name__ == '__main__':` guard, which spawned workers need); fix that or run "
                              "with workers: 1") from None
