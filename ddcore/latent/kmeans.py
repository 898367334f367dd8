"""Streaming k-means / CLVQ quantization of one class's latents, and W2 quality metrics (torch).

Data sources (``Source``) may be: a tensor ``[N, ...]`` (rows are flattened to ``[N, D]``); a
zero-argument callable returning a fresh iterable of batches ``[b, ...]`` (re-startable: several
passes possible, data never all in memory); a re-iterable such as a list of batches; or a one-shot
iterator (a single pass only). Batches are re-chunked to exactly ``batch_size`` rows in arrival order,
so an iterator of batches and the tensor of their concatenation give identical results.

Randomness only comes from the ``generator`` passed in; draws are made on the generator's device and
moved, so a CPU generator gives the same choices whatever device the data live on.

W2 metrics: for centroids ``c_k`` with weights ``w_k`` the quantizer is ``nu = sum_k w_k delta_{c_k}``
and ``mu = (1/N) sum_i delta_{x_i}`` the empirical measure. ``W2^2(mu, nu)`` is

- for Voronoi masses ``w_k = |cell_k| / N`` (DDOQ): exactly the mean squared distance to the nearest
  centroid (every point going to its nearest centroid is a feasible plan reaching the lower bound),
  which is also the minimum over all weight vectors, so ``w2_weighted <= w2_uniform`` always;
- for any other weights (e.g. uniform ``1/K``, D4M): an optimal transport problem, solved exactly by
  :func:`w2_discrete` (an assignment problem when every ``N * w_k`` is an integer, else a linear
  program). Use per-class subsamples of a few thousand points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import torch

from ddcore.errors import DataError

Source = Any  # torch.Tensor | Callable[[], Iterable[Tensor]] | Iterable[Tensor]


@dataclass
class KMeansResult:
    """Output of :func:`minibatch_kmeans`.

    Attributes:
        centroids: ``[K, D]`` in the input dtype.
        counts: float64 ``[K]`` samples assigned to each centre during the updates (streaming counts,
            summed over passes; use :func:`cell_counts` for exact final cell masses).
        steps: mini-batch updates made.
        passes: passes over the source begun.
        samples_seen: rows used in updates.
    """

    centroids: torch.Tensor
    counts: torch.Tensor
    steps: int
    passes: int
    samples_seen: int


def _flat(b: torch.Tensor) -> torch.Tensor:
    return b.reshape(b.shape[0], math.prod(b.shape[1:]))


def _opener(source: Source) -> tuple[Callable[[], Iterator[torch.Tensor]], bool]:
    """``(open, restartable)`` for a source."""
    if isinstance(source, torch.Tensor):
        return (lambda: iter((source,))), True
    if callable(source):
        return (lambda: iter(source())), True
    if isinstance(source, Iterator):
        return (lambda: source), False
    return (lambda: iter(source)), True


def rechunk(batches: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Flattened ``[size, D]`` chunks of a stream of ``[b, ...]`` batches, in order (last may be short)."""
    buf: list[torch.Tensor] = []
    n = 0
    for b in batches:
        b = _flat(b)
        while b.shape[0]:
            take = min(size - n, b.shape[0])
            buf.append(b[:take])
            n += take
            b = b[take:]
            if n == size:
                yield buf[0] if len(buf) == 1 else torch.cat(buf)
                buf, n = [], 0
    if n:
        yield buf[0] if len(buf) == 1 else torch.cat(buf)


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[N, K]`` between rows of ``x [N, D]`` and ``c [K, D]`` (dtype of ``x``).

    Computed pair by pair (``torch.cdist`` without the matrix-multiply expansion), so every distance is
    summed in the same order whatever the number of threads: a matrix product's blocking depends on the
    thread count, which made k-means assignments (and so DDOQ/D4M sets) differ between runners.
    """
    return torch.cdist(x, c.to(x.dtype), compute_mode="donot_use_mm_for_euclid_dist").square_()


def _uniform(generator: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``k`` rows of ``x [N, D]`` -> ``[k, D]``.

    Each next centre is drawn with probability proportional to the squared distance to the nearest
    centre chosen so far (inverse-CDF draw from ``generator``).
    """
    x = _flat(x)
    n = x.shape[0]
    if n < k:
        raise DataError(f"k-means needs at least k={k} points, got {n}; lower ipc or add data")
    idx = [min(int(_uniform(generator).item() * n), n - 1)]
    d2 = sq_dists(x, x[idx[0] : idx[0] + 1]).squeeze(1).double()
    for _ in range(1, k):
        cum = torch.cumsum(d2, 0)
        total = float(cum[-1])
        if total <= 0.0:  # all points coincide with chosen centres: pick uniformly
            j = min(int(_uniform(generator).item() * n), n - 1)
        else:
            u = torch.tensor([_uniform(generator).item() * total], dtype=torch.float64, device=cum.device)
            j = min(int(torch.searchsorted(cum, u).item()), n - 1)
        idx.append(j)
        d2 = torch.minimum(d2, sq_dists(x, x[j : j + 1]).squeeze(1).double())
    return x[idx].clone()


def random_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct rows of ``x`` drawn uniformly -> ``[k, D]``."""
    x = _flat(x)
    if x.shape[0] < k:
        raise DataError(f"k-means needs at least k={k} points, got {x.shape[0]}; lower ipc or add data")
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).cpu()
    return x[perm[:k].to(x.device)].clone()


def minibatch_kmeans(
    source: Source,
    k: int,
    *,
    iters: int | None,
    batch_size: int,
    generator: torch.Generator,
    init: Literal["kmeans++", "random"] = "kmeans++",
    update: Literal["minibatch", "clvq"] = "minibatch",
    init_size: int | None = None,
    clvq_gamma0: float = 0.5,
    clvq_tau: float = 1000.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> KMeansResult:
    """Streaming quantization of ``source`` into ``k`` centres.

    Init uses the first ``init_size`` rows (default ``max(3 * batch_size, 3 * k)``, like scikit-learn),
    which are then also fed to the updates. Each update takes the next ``batch_size`` rows, assigns
    them to their nearest centre (``b_j`` rows with mean ``m_j`` in cell ``j``) and moves
    ``c_j <- c_j + a_j (m_j - c_j)`` with

    - ``update='minibatch'`` (Sculley 2010 / scikit-learn): ``a_j = b_j / (n_j + b_j)`` where ``n_j`` is
      the centre's running count, i.e. a per-sample learning rate ``1 / count``;
    - ``update='clvq'`` (competitive learning VQ, Pages): per-sample step
      ``gamma_n = clvq_gamma0 * clvq_tau / (clvq_tau + n)`` (``n`` = rows seen before the batch,
      decreasing, sum infinite, sum of squares finite), applied to the batch as
      ``a_j = 1 - (1 - gamma_n) ** b_j``.

    ``iters`` updates are made, restarting the source when it runs out (a one-shot iterator stops
    after one pass); ``iters=None`` makes exactly one pass. ``on_step(step, centroids [K, D])`` is
    called after every update. Centres are kept in float64 internally.
    """
    if not 0.0 < clvq_gamma0 <= 1.0:
        raise ValueError("clvq_gamma0 must lie in (0, 1]")
    if init not in ("kmeans++", "random") or update not in ("minibatch", "clvq"):
        raise ValueError(f"unknown init {init!r} or update {update!r}")
    open_, restartable = _opener(source)
    size = init_size if init_size is not None else max(3 * batch_size, 3 * k)
    raw = open_()
    head: list[torch.Tensor] = []
    got = 0
    for b in raw:
        head.append(_flat(b))
        got += head[-1].shape[0]
        if got >= size:
            break
    if not head:
        raise DataError("k-means got an empty data stream; check the class has latents")
    parts, left = [], size
    for h in head:
        if left <= 0:
            break
        parts.append(h[:left])
        left -= parts[-1].shape[0]
    init_x = torch.cat(parts)
    seed_fn = kmeans_pp_init if init == "kmeans++" else random_init
    c = seed_fn(init_x, k, generator).double()
    out_dtype = init_x.dtype
    counts = torch.zeros(k, dtype=torch.float64, device=c.device)
    stream = rechunk(chain(head, raw), batch_size)
    steps, passes, seen = 0, 1, 0
    while iters is None or steps < iters:
        x = next(stream, None)
        if x is None:
            if iters is None or not restartable:
                break
            stream, passes = rechunk(open_(), batch_size), passes + 1
            x = next(stream, None)
            if x is None:
                break
        lab = sq_dists(x, c.to(x.dtype)).argmin(1)
        nb = torch.bincount(lab, minlength=k).double()
        sums = torch.zeros_like(c).index_add_(0, lab, x.double())
        hit = nb > 0
        mean_b = sums / nb.clamp_min(1.0)[:, None]
        if update == "minibatch":
            a = torch.where(hit, nb / (counts + nb).clamp_min(1.0), torch.zeros_like(nb))
        else:
            gamma = clvq_gamma0 * clvq_tau / (clvq_tau + seen)
            a = 1.0 - (1.0 - gamma) ** nb
        c = c + a[:, None] * (mean_b - c) * hit[:, None]
        counts += nb
        seen += x.shape[0]
        steps += 1
        if on_step is not None:
            on_step(steps, c.to(out_dtype))
    return KMeansResult(c.to(out_dtype), counts, steps, passes, seen)


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    chunk: int = 4096,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest centre of every row of ``x [N, ...]``: ``(labels int64 [N], sq_dist [N])``.

    Works in ``chunk``-row pieces; ``dtype`` (default: ``x``'s) is the dtype distances are computed in.
    """
    x = _flat(x)
    dt = dtype or x.dtype
    c = _flat(centroids).to(device=x.device, dtype=dt)
    labs, d2s = [], []
    for i in range(0, x.shape[0], chunk):
        d, j = sq_dists(x[i : i + chunk].to(dt), c).min(1)
        labs.append(j)
        d2s.append(d)
    if not labs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=dt)
    return torch.cat(labs), torch.cat(d2s)


def cell_counts(
    source: Source,
    centroids: torch.Tensor,
    *,
    chunk: int = 4096,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, float, int]:
    """One exact streaming pass: ``(counts int64 [K], sum of squared distances, N)``."""
    k = centroids.shape[0]
    counts = torch.zeros(k, dtype=torch.long)
    sse, n = 0.0, 0
    for b in _opener(source)[0]():
        lab, d2 = assign(b, centroids, chunk=chunk, dtype=dtype)
        counts += torch.bincount(lab.cpu(), minlength=k)
        sse += float(d2.double().sum())
        n += lab.numel()
    return counts, sse, n


def cell_masses(counts: torch.Tensor) -> torch.Tensor:
    """Voronoi cell masses: float64 ``counts / counts.sum()`` (sum to 1)."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        raise DataError("cell counts are all zero; the class stream produced no latents")
    return counts / total


def quantization_error(
    source: Source,
    centroids: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    chunk: int = 4096,
) -> float:
    """``W2^2`` between the empirical measure of ``source`` and ``sum_k w_k delta_{c_k}``.

    ``weights=None`` means the Voronoi masses: a streaming pass computing the mean squared distance to
    the nearest centre (exact). With explicit weights the source is materialised and
    :func:`w2_weighted` is used.
    """
    if weights is None:
        _, sse, n = cell_counts(source, centroids, chunk=chunk)
        if n == 0:
            raise DataError("quantization_error got an empty data stream")
        return sse / n
    x = torch.cat([_flat(b) for b in _opener(source)[0]()])
    return w2_weighted(x, centroids, weights, chunk=chunk)


def w2_weighted(
    x: torch.Tensor,
    centroids: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    chunk: int = 4096,
    atol: float = 1e-9,
) -> float:
    """``W2^2(mu_x, sum_k w_k delta_{c_k})``; ``weights=None`` means the Voronoi masses of ``x``.

    When ``weights`` equal the Voronoi masses of ``x`` (within ``atol``) this is the mean squared
    nearest-centre distance; otherwise (e.g. masses estimated on more data than ``x``) it falls back
    to the exact transport of :func:`w2_discrete`.
    """
    lab, d2 = assign(x, centroids, chunk=chunk, dtype=torch.float64)
    masses = cell_masses(torch.bincount(lab.cpu(), minlength=centroids.shape[0]))
    if weights is None or torch.allclose(
        weights.double().cpu() / weights.double().sum().cpu(), masses, atol=atol
    ):
        return float(d2.mean())
    return w2_discrete(x, centroids, weights)


def w2_uniform(x: torch.Tensor, centroids: torch.Tensor, **kw: Any) -> float:
    """``W2^2(mu_x, (1/K) sum_k delta_{c_k})``: the D4M (uniform-weight) quantizer, exact OT."""
    k = centroids.shape[0]
    return w2_discrete(x, centroids, torch.full((k,), 1.0 / k, dtype=torch.float64), **kw)


def w2_discrete(
    x: torch.Tensor,
    centroids: torch.Tensor,
    weights: torch.Tensor,
    *,
    max_assignment: int = 4096,
) -> float:
    """Exact ``W2^2`` between ``N`` uniform points ``x [N, ...]`` and ``K`` weighted points.

    If every ``N * w_k`` is an integer and ``N <= max_assignment``, centre ``k`` is replicated
    ``N * w_k`` times and the ``N x N`` assignment problem is solved
    (``scipy.optimize.linear_sum_assignment``); otherwise the ``N x K`` transportation LP is solved
    with HiGHS (``scipy.optimize.linprog``). Cost is O(N^3) resp. an LP with ``N * K`` variables, so
    keep ``N`` to a few thousand (subsample per class).
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment, linprog
    from scipy.sparse import coo_matrix

    w = weights.detach().double().cpu().numpy()
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    w = w / w.sum()
    cost = sq_dists(_flat(x).double(), _flat(centroids).double().to(x.device)).cpu().numpy()
    n, k = cost.shape
    reps = n * w
    if (
        n <= max_assignment
        and np.allclose(reps, np.round(reps), atol=1e-6)
        and int(np.round(reps).sum()) == n
    ):
        cols = np.repeat(np.arange(k), np.round(reps).astype(np.int64))
        full = cost[:, cols]
        r, cidx = linear_sum_assignment(full)
        return float(full[r, cidx].sum() / n)
    # variables P[i, j] (row-major), scaled so row sums are 1 and column sums are N * w_j.
    rows = np.concatenate([np.repeat(np.arange(n), k), n + np.tile(np.arange(k - 1), n)])
    cols_all = np.arange(n * k)
    keep = np.tile(np.arange(k) < k - 1, n)
    a_eq = coo_matrix(
        (np.ones(n * k + int(keep.sum())), (rows, np.concatenate([cols_all, cols_all[keep]]))),
        shape=(n + k - 1, n * k),
    ).tocsr()
    b_eq = np.concatenate([np.ones(n), reps[:-1]])
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"transport LP failed: {res.message}")
    return float(res.fun / n)
