"""Property tests for ddcore.prune.hyperbolic (docs/methods.md §3.5; the ranking rule is our reading)."""

from __future__ import annotations

import math

import pytest
import torch

from ddcore.geometry.lorentz import centroid, dist, dist0, expmap0, lift
from ddcore.prune.hyperbolic import hyperbolic_scores, keep_count, prune_by_class, select_keep

SEEDS = range(5)
SIZES = {0: 10, 3: 7, 4: 1, 7: 25}  # class -> size; non-contiguous class ids, unequal sizes


def dataset(seed: int, *, d: int = 12, scale: float = 1.0, dtype=torch.float32):
    """Shuffled features/labels/keys with the class sizes of SIZES."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in SIZES.items()])
    perm = torch.randperm(labels.numel(), generator=g)
    labels = labels[perm]
    feats = (scale * torch.randn(labels.numel(), d, generator=g, dtype=torch.float64)).to(dtype)
    feats += labels.unsqueeze(1).to(dtype) * 0.3  # class-dependent offset
    keys = [f"s{seed}/{i:03d}" for i in range(labels.numel())]
    return feats, labels, keys


@pytest.mark.parametrize("n", (0, 1, 2, 3, 5, 7, 10, 25, 101))
@pytest.mark.parametrize("fraction", (0.05, 0.1, 0.2, 0.25, 0.5, 1.0))
def test_keep_count_rounds_half_up_and_keeps_at_least_one(n, fraction):
    """keep_count = round(fraction * n) (half up), clipped to [1, n]; 0 for an empty class."""
    expected = 0 if n == 0 else min(n, max(1, math.floor(fraction * n + 0.5)))
    assert keep_count(n, fraction) == expected


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fraction", (0.2, 0.5, 1.0))
@pytest.mark.parametrize("reference", ("centroid", "origin"))
@pytest.mark.parametrize("clamp", (10.0, None))
def test_prune_keeps_exact_count_per_class_and_aligned_keys(seed, fraction, reference, clamp):
    """prune_by_class keeps exactly keep_count(n_c) rows of every class; kept_indices are ascending and
    unique, kept_keys[i] == keys[kept_indices[i]], and scores are float64 [N]."""
    feats, labels, keys = dataset(seed)
    res = prune_by_class(
        feats, labels, fraction=fraction, k=1.0, clamp_radius=clamp, reference=reference, keys=keys
    )
    kept = res.kept_indices
    assert kept.dtype == torch.int64
    assert torch.equal(kept, torch.unique(kept))  # sorted, no duplicates
    for c, n in SIZES.items():
        assert int((labels[kept] == c).sum()) == keep_count(n, fraction)
    assert res.kept_keys == [keys[i] for i in kept.tolist()]
    assert res.scores.shape == (labels.numel(),) and res.scores.dtype == torch.float64
    assert torch.isfinite(res.scores).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reference", ("centroid", "origin"))
def test_closest_and_farthest_keep_the_extremes_of_each_class(seed, reference):
    """'closest' keeps rows whose scores are <= every dropped row of their class; 'farthest' the reverse;
    at fraction 0.2 the two selections are disjoint."""
    feats, labels, keys = dataset(seed)
    kw = dict(fraction=0.2, k=1.3, clamp_radius=None, reference=reference, keys=keys)
    near = prune_by_class(feats, labels, order="closest", **kw)
    far = prune_by_class(feats, labels, order="farthest", **kw)
    for c, n in SIZES.items():
        idx = torch.nonzero(labels == c).flatten()
        for res, better in ((near, torch.le), (far, torch.ge)):
            mask = torch.isin(idx, res.kept_indices)
            kept_s, dropped_s = res.scores[idx[mask]], res.scores[idx[~mask]]
            if dropped_s.numel():
                worst = kept_s.max() if better is torch.le else kept_s.min()
                edge = dropped_s.min() if better is torch.le else dropped_s.max()
                assert bool(better(worst, edge))
        if n > 1:
            assert not torch.isin(near.kept_indices[labels[near.kept_indices] == c], far.kept_indices).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", (0.5, 1.0, 2.4))
def test_unclamped_origin_scores_are_feature_norms(seed, k):
    """'origin' scores equal dist0(exp0((0, f))) (clamped or not); without the clamp they are |f|, so
    'origin' ranks by feature norm."""
    feats, labels, _ = dataset(seed, dtype=torch.float64)
    s = hyperbolic_scores(feats, k=k, clamp_radius=None, reference="origin")
    assert torch.allclose(s, feats.norm(dim=1), rtol=1e-12, atol=0)
    for clamp in (None, 1.0):  # the closed form is geoopt's dist0 of the mapped points
        x = expmap0(lift(feats), k=k, clamp_radius=clamp)
        s = hyperbolic_scores(feats, k=k, clamp_radius=clamp, reference="origin")
        assert torch.allclose(s, dist0(x, k=k), rtol=1e-9, atol=1e-6)
    res = prune_by_class(feats, labels, fraction=0.2, k=k, clamp_radius=None, reference="origin")
    idx = torch.nonzero(labels == 7).flatten()
    expected = idx[torch.argsort(feats[idx].norm(dim=1))[: keep_count(25, 0.2)]]
    assert torch.equal(res.kept_indices[labels[res.kept_indices] == 7], torch.sort(expected).values)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clamp", (10.0, None))
def test_centroid_scores_are_distances_to_the_class_centroid(seed, clamp):
    """'centroid' scores equal dist(exp0(f_i), centroid of the class), class by class."""
    feats, labels, _ = dataset(seed, scale=4.0)
    res = prune_by_class(feats, labels, fraction=0.5, k=2.0, clamp_radius=clamp, reference="centroid")
    for c in SIZES:
        idx = torch.nonzero(labels == c).flatten()
        x = expmap0(lift(feats[idx]), k=2.0, clamp_radius=clamp)
        assert torch.allclose(res.scores[idx], dist(x, centroid(x, k=2.0), k=2.0), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_active_clamp_makes_origin_scores_constant_and_centroid_rank_cosine(seed):
    """With every |f| > 10*sqrt(k) (random-ConvNet regime, §3.3): origin scores all equal 10*sqrt(k), so
    the stable sort keeps the first rows; centroid scores rank rows by cosine similarity to the mean
    unit feature."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(40, 32, generator=g, dtype=torch.float64) + 0.5
    f = f / f.norm(dim=1, keepdim=True) * (12.0 + 10.0 * torch.rand(40, 1, generator=g, dtype=torch.float64))
    origin = hyperbolic_scores(f, k=1.0, clamp_radius=10.0, reference="origin")
    assert torch.equal(origin, torch.full_like(origin, 10.0))
    assert torch.equal(select_keep([origin], fraction=0.2)[0], torch.arange(8))
    u = f / f.norm(dim=1, keepdim=True)
    cos = u @ u.mean(dim=0)
    scores = hyperbolic_scores(f, k=1.0, clamp_radius=10.0, reference="centroid")
    assert torch.equal(torch.argsort(scores), torch.argsort(-cos))


def test_select_keep_orders_and_ties():
    """select_keep returns positions in rank order per class; ties keep the earlier position."""
    s = [torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0]), torch.tensor([0.5])]
    near = select_keep(s, fraction=0.6, order="closest")
    far = select_keep(s, fraction=0.6, order="farthest")
    assert near[0].tolist() == [1, 3, 2] and near[1].tolist() == [0]
    assert far[0].tolist() == [4, 0, 2] and far[1].tolist() == [0]
    assert all(t.dtype == torch.int64 for t in near + far)


def test_float32_and_float64_features_select_the_same_rows():
    """Scores are computed in float64 whatever the input dtype, so the selection does not depend on it."""
    feats, labels, _ = dataset(3, dtype=torch.float64)
    kw = dict(fraction=0.2, k=1.0, clamp_radius=10.0, reference="centroid")
    a = prune_by_class(feats.float(), labels, **kw)
    b = prune_by_class(feats.float().double(), labels, **kw)
    assert torch.equal(a.kept_indices, b.kept_indices) and torch.equal(a.scores, b.scores)


def test_bad_arguments_are_rejected():
    """Invalid fraction, reference, order or key count raise ValueError."""
    feats, labels, keys = dataset(0)
    kw = dict(k=1.0, clamp_radius=10.0, reference="centroid")
    with pytest.raises(ValueError, match="fraction"):
        prune_by_class(feats, labels, fraction=0.0, **kw)
    with pytest.raises(ValueError, match="fraction"):
        prune_by_class(feats, labels, fraction=1.5, **kw)
    with pytest.raises(ValueError, match="reference"):
        prune_by_class(feats, labels, fraction=0.2, k=1.0, clamp_radius=10.0, reference="root")
    with pytest.raises(ValueError, match="order"):
        prune_by_class(feats, labels, fraction=0.2, order="nearest", **kw)
    with pytest.raises(ValueError, match="keys"):
        prune_by_class(feats, labels, fraction=0.2, keys=keys[:-1], **kw)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("order", ("closest", "farthest", "stratified"))
@pytest.mark.parametrize(("reference", "clamp"), (("centroid", 10.0), ("centroid", None), ("origin", None)))
def test_kept_rows_do_not_depend_on_the_order_of_the_batch(seed, order, reference, clamp):
    """Shuffling the rows before scoring keeps the same samples (compared by key) under every rule."""
    feats, labels, keys = dataset(seed)
    kw = dict(fraction=0.3, k=1.0, clamp_radius=clamp, reference=reference, order=order)
    base = prune_by_class(feats, labels, keys=keys, **kw)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed + 100))
    shuffled = prune_by_class(feats[perm], labels[perm], keys=[keys[i] for i in perm.tolist()], **kw)
    assert sorted(shuffled.kept_keys) == sorted(base.kept_keys)


@pytest.mark.parametrize(("n", "m"), ((10, 2), (25, 5), (7, 3), (101, 20), (5, 5), (1, 1)))
def test_stratified_rule_takes_one_sample_from_each_equal_count_bin(n, m):
    """'stratified' keeps the middle rank of each of m equal-count bins of the sorted scores: exactly one kept
    rank lies in every bin [i n/m, (i+1) n/m), so the kept set spans the class's range of distances."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    scores = torch.linspace(0.0, 1.0, n, dtype=torch.float64)[perm]
    (kept,) = select_keep([scores], fraction=m / n, order="stratified")
    ranks = torch.argsort(torch.argsort(scores))[kept]
    assert kept.numel() == m
    for i in range(m):
        assert int(((ranks * m >= i * n) & (ranks * m < (i + 1) * n)).sum()) == 1
