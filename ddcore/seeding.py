"""Every seed ddflow derives, in one place: named sub-seeds and counter-based per-iteration streams.

Two schemes, both sha256 of a ``:``-joined text and both stable across platforms and versions; each
keeps its exact bits, because recorded artifacts were drawn from them:

- :func:`derive_seed` ``(seed, *tags)``: the top 63 bits of the first 8 bytes (little-endian, ``>> 1``).
  Used for named roles: ``shuffle``/``augment`` of an evaluation run, the VAE's and the denoiser's data order and noise,
  k-means per class, pushforward draws, W2 subsamples.
- :func:`iteration_seed` ``(seed, iteration, role)``: the low 63 bits of the same 8 bytes (``& (2^63-1)``).
  Used by the distillation loops, which draw everything of iteration ``i`` from it
  (:class:`IterationRng`), so a loop resumes bit-for-bit from a checkpoint holding only ``i``.
"""

from __future__ import annotations

import hashlib

import torch

_MASK63 = (1 << 63) - 1


def _sha8(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed for ``(seed, *tags)``: ``sha256("seed:tag1:tag2...")[:8]`` little-endian ``>> 1``."""
    return _sha8(":".join(str(t) for t in (seed, *tags))) >> 1


def generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` ``(seed, *tags)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


def iteration_seed(seed: int, iteration: int, role: str = "iter") -> int:
    """A 63-bit seed for ``(seed, iteration, role)``: ``sha256("seed:iteration:role")[:8]`` ``& (2^63 - 1)``."""
    return _sha8(f"{seed}:{iteration}:{role}") & _MASK63


def iteration_generator(seed: int, iteration: int, role: str = "iter") -> torch.Generator:
    """CPU generator for iteration ``iteration`` of a loop seeded with ``seed``."""
    return torch.Generator().manual_seed(iteration_seed(seed, iteration, role))


def draw_seed(generator: torch.Generator) -> int:
    """A seed drawn from ``generator`` (one ``randint`` below 2^62; the stream advances by that draw)."""
    return int(torch.randint(2**62, (1,), generator=generator).item())


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`draw_seed` ``(generator)``."""
    return torch.Generator(device=device).manual_seed(draw_seed(generator))


def normal(shape: tuple[int, ...], *, generator: torch.Generator, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal ``dtype`` draws of ``shape`` on ``device`` (default: the generator's), fixed by ``generator``.

    On the generator's device type they are drawn directly, so CPU runs keep their values. On another device (a
    CPU stream, a GPU target) they come from :func:`device_generator`: drawing on the host and copying would cost
    an NCFM iteration ~30 ms of host time and a 33 MB copy at 4 096 x 2 048 frequencies. The values then differ
    from a CPU run's, while the seed chain (and so resuming from a checkpoint) stays the same.
    """
    dev = generator.device if device is None else torch.device(device)
    g = generator if dev.type == generator.device.type else device_generator(generator, dev)
    return torch.randn(shape, generator=g, device=dev, dtype=dtype)


ITERATION_SCHEME = "sha256(seed:iteration:role), role iter|class:<c>"
"""How :class:`IterationRng` derives its streams; recorded in every loop checkpoint."""


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
