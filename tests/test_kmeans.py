"""Streaming k-means / CLVQ quantization and the W2 metrics of ddcore.latent.kmeans."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddcore.errors import DataError
from ddcore.latent.kmeans import (
    assign,
    cell_counts,
    cell_masses,
    kmeans_pp_init,
    minibatch_kmeans,
    quantization_error,
    w2_discrete,
    w2_uniform,
    w2_weighted,
)


def mixture(sizes: list[int], dim: int = 8, spread: float = 6.0, seed: int = 0) -> torch.Tensor:
    """Gaussian clusters of the given sizes (float64, [sum(sizes), dim]), shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g, dtype=torch.float64) * spread
    x = torch.cat(
        [centres[i] + torch.randn(n, dim, generator=g, dtype=torch.float64) for i, n in enumerate(sizes)]
    )
    return x[torch.randperm(x.shape[0], generator=g)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_full_batch_minibatch_kmeans_error_is_monotone() -> None:
    """With batch = whole data set, every 1/count update lowers the quantization error (never rises)."""
    x = mixture([80, 60, 50, 40, 30, 20], seed=1)
    errs: list[float] = []
    init = minibatch_kmeans(x, 6, iters=0, batch_size=x.shape[0], generator=gen(3)).centroids
    minibatch_kmeans(
        x,
        6,
        iters=12,
        batch_size=x.shape[0],
        generator=gen(3),
        init="random",
        on_step=lambda s, c: errs.append(quantization_error(x, c)),
    )
    errs_pp: list[float] = []
    minibatch_kmeans(
        x,
        6,
        iters=12,
        batch_size=x.shape[0],
        generator=gen(3),
        on_step=lambda s, c: errs_pp.append(quantization_error(x, c)),
    )
    for e in (errs, errs_pp):
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(e)), e
    assert errs_pp[-1] <= quantization_error(x, init)
    assert errs[-1] < errs[0]


def test_minibatch_and_clvq_improve_on_init() -> None:
    """Mini-batch k-means and CLVQ on small batches end well below the k-means++ init error and
    near full-batch k-means."""
    x = mixture([200, 150, 100, 50], dim=6, seed=2).float()
    init = minibatch_kmeans(x, 4, iters=0, batch_size=32, generator=gen(5)).centroids
    e0 = quantization_error(x, init)
    full = minibatch_kmeans(x, 4, iters=20, batch_size=x.shape[0], generator=gen(5)).centroids
    for update in ("minibatch", "clvq"):
        res = minibatch_kmeans(x, 4, iters=60, batch_size=32, generator=gen(5), update=update, clvq_tau=200.0)
        e = quantization_error(x, res.centroids)
        assert e < 0.8 * e0, (update, e, e0)
        assert e < 1.5 * quantization_error(x, full), update
        assert res.steps == 60 and res.passes == 4 and res.samples_seen == 3 * 500 + 12 * 32


def test_cell_masses_match_bruteforce_assignment() -> None:
    """Streaming cell counts equal a brute-force nearest-centroid count, and masses sum to 1."""
    x = mixture([70, 50, 30, 25], seed=4)
    c = minibatch_kmeans(x, 5, iters=10, batch_size=64, generator=gen(1)).centroids
    brute = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)
    batches = [x[i : i + 17] for i in range(0, x.shape[0], 17)]
    counts, sse, n = cell_counts(lambda: iter(batches), c, chunk=7)
    assert torch.equal(counts, torch.bincount(brute, minlength=5))
    assert n == x.shape[0]
    lab, d2 = assign(x, c, chunk=11)
    assert torch.equal(lab, brute)
    assert sse / n == pytest.approx(float(d2.mean()), rel=1e-12)
    m = cell_masses(counts)
    assert float(m.sum()) == pytest.approx(1.0, abs=1e-12) and (m >= 0).all()


def test_streaming_iterator_equals_in_memory() -> None:
    """A one-shot iterator of ragged batches, a restartable callable and the in-memory tensor give
    identical centroids and counts (same seed, same row order)."""
    x = mixture([60, 40, 30, 20], seed=6).float()
    sizes = [5, 33, 1, 64, 20, 27]
    cuts = torch.tensor(sizes).cumsum(0).tolist()
    ragged = [x[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)] + [x[cuts[-1] :]]
    kw = dict(k=4, batch_size=24, generator=None, init_size=50)
    one_pass_mem = minibatch_kmeans(x, **{**kw, "generator": gen(2)}, iters=None)
    one_pass_iter = minibatch_kmeans(iter(ragged), **{**kw, "generator": gen(2)}, iters=None)
    assert torch.equal(one_pass_mem.centroids, one_pass_iter.centroids)
    assert torch.equal(one_pass_mem.counts, one_pass_iter.counts)
    assert one_pass_mem.passes == 1 and one_pass_mem.samples_seen == x.shape[0]
    multi_mem = minibatch_kmeans(x, **{**kw, "generator": gen(2)}, iters=25)
    multi_call = minibatch_kmeans(lambda: iter(ragged), **{**kw, "generator": gen(2)}, iters=25)
    assert (
        torch.equal(multi_mem.centroids, multi_call.centroids) and multi_mem.passes == multi_call.passes > 1
    )
    # a one-shot iterator cannot be restarted: it stops after one pass
    short = minibatch_kmeans(iter(ragged), **{**kw, "generator": gen(2)}, iters=25)
    assert short.passes == 1 and short.steps == one_pass_iter.steps


def test_weighted_w2_not_above_uniform_w2() -> None:
    """On unbalanced clustered data the Voronoi-weighted quantizer has a strictly lower W2 than the
    same centroids with uniform weights (W2 computed exactly)."""
    x = mixture([120, 40, 25, 15], dim=4, seed=8)
    res = minibatch_kmeans(x, 4, iters=20, batch_size=x.shape[0], generator=gen(0))
    counts, _, _ = cell_counts(x, res.centroids)
    w_mass = cell_masses(counts)
    ww = w2_weighted(x, res.centroids, w_mass)
    wu = w2_uniform(x, res.centroids)
    assert ww == pytest.approx(quantization_error(x, res.centroids), rel=1e-12)
    assert ww < wu
    # the closed form for Voronoi masses agrees with the exact transport LP
    assert w2_discrete(x, res.centroids, w_mass, max_assignment=0) == pytest.approx(ww, rel=1e-6)


def test_w2_discrete_assignment_lp_and_bruteforce_agree() -> None:
    """The assignment path, the LP path and brute-force enumeration give the same exact W2^2."""
    x = mixture([5, 4, 3], dim=3, seed=9)
    c = x[:3] + 0.3
    lsa = w2_uniform(x, c)  # N=12 divisible by K=3: assignment path
    lp = w2_uniform(x, c, max_assignment=0)
    cost = ((x[:, None] - c[None]) ** 2).sum(-1)
    small = cost[:6]  # 6 points, 3 centroids x 2 copies: enumerate all 720 matchings
    cols = [0, 0, 1, 1, 2, 2]
    brute = min(
        sum(float(small[i, cols[p]]) for i, p in enumerate(perm)) for perm in itertools.permutations(range(6))
    )
    assert lp == pytest.approx(lsa, rel=1e-7)
    assert w2_uniform(x[:6], c) == pytest.approx(brute / 6, rel=1e-10)
    # non-divisible sizes use the LP; the Voronoi value is a lower bound
    x7 = x[:7]
    lab, d2 = assign(x7, c, dtype=torch.float64)
    assert float(d2.mean()) <= w2_uniform(x7, c) + 1e-12


def test_kmeans_needs_k_points_and_is_seeded() -> None:
    """Fewer points than k is a one-line DataError; k-means++ with the same seed picks the same rows."""
    x = mixture([3], seed=0)
    with pytest.raises(DataError, match="lower ipc"):
        kmeans_pp_init(x, 5, gen(0))
    with pytest.raises(DataError):
        minibatch_kmeans(iter([x]), 5, iters=3, batch_size=2, generator=gen(0))
    y = mixture([30, 30], seed=1)
    assert torch.equal(kmeans_pp_init(y, 4, gen(7)), kmeans_pp_init(y, 4, gen(7)))
