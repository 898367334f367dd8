"""Property tests for ddcore.distill.losses and ddcore.distill.sampling_net (docs/methods.md §2-§4)."""

from __future__ import annotations

import math

import pytest
import torch

from ddcore.distill.losses import (
    dm_loss,
    dm_loss_batched,
    hdd_loss,
    hdd_loss_batched,
    ncfd,
    ncfd_batched,
    ncfm_loss,
    ncfm_loss_batched,
)
from ddcore.distill.sampling_net import (
    FrequencySampler,
    build_psi_optimizer,
    gaussian_frequencies,
    psi_step,
)
from ddcore.geometry.lorentz import klein_closed_form

SEEDS = range(5)
DTYPES = (torch.float32, torch.float64)
D = 16


def randn(seed: int, *shape: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def large_norm(seed: int, *shape: int, k: float, dtype=torch.float64) -> torch.Tensor:
    """Features whose norms all exceed 10*sqrt(k) (the HDD clamp is active)."""
    f = randn(seed, *shape, dtype=torch.float64)
    norms = math.sqrt(k) * (
        11.0 + 20.0 * torch.rand(*shape[:-1], 1, generator=torch.Generator().manual_seed(seed))
    )
    return (f / f.norm(dim=-1, keepdim=True) * norms.double()).to(dtype)


def cf(feat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Empirical characteristic function of L2-normalised features, computed with complex numbers."""
    f = feat.double() / feat.double().norm(dim=-1, keepdim=True)
    return torch.exp(1j * (f @ t.double().T).to(torch.complex128)).mean(dim=0)


HDD_KW = dict(k=1.0, scale=20.0, clamp_radius=10.0)
NCFD_KW = dict(alpha=0.5, beta=0.5)


# --------------------------------------------------------------------------------------------- DM


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dm_loss_is_zero_when_syn_equals_real_mean(seed, dtype):
    """DM loss vanishes when every synthetic feature equals the real mean, and is the squared mean gap."""
    real = randn(seed, 64, D, dtype=dtype)
    syn = real.mean(dim=0, keepdim=True).repeat(3, 1)
    assert float(dm_loss(real, syn)) < 1e-10
    other = randn(seed + 50, 3, D, dtype=dtype)
    expected = ((real.mean(0) - other.mean(0)) ** 2).sum()
    assert torch.allclose(dm_loss(real, other), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_dm_batched_equals_sum_of_per_class(seed):
    """dm_loss_batched (stacked and indexed layouts) equals the sum of per-class dm_loss."""
    real, syn = randn(seed, 3, 40, D), randn(seed + 1, 3, 5, D)
    per_class = sum(dm_loss(real[c], syn[c]) for c in range(3))
    assert torch.allclose(dm_loss_batched(real, syn), per_class, rtol=1e-5)
    rf, rl, sf, sl = _indexed(real, syn, seed)
    assert torch.allclose(dm_loss_batched(rf, sf, real_labels=rl, syn_labels=sl), per_class, rtol=1e-5)


def _indexed(real: torch.Tensor, syn: torch.Tensor, seed: int):
    """Flatten stacked [K, B, D] features to shuffled rows with labels; drop some real rows of class 0
    so class sizes differ (the per-class sums use the same rows)."""
    k, br, _ = real.shape
    g = torch.Generator().manual_seed(seed)
    rl = torch.arange(k).repeat_interleave(br)
    sl = torch.arange(k).repeat_interleave(syn.shape[1])
    pr, ps = torch.randperm(rl.numel(), generator=g), torch.randperm(sl.numel(), generator=g)
    return real.reshape(-1, real.shape[-1])[pr], rl[pr], syn.reshape(-1, syn.shape[-1])[ps], sl[ps]


def test_indexed_layout_rejects_one_sided_classes_and_skips_absent_ones():
    """A class with real rows but no synthetic rows is an error; classes absent on both sides are skipped."""
    real, syn = randn(0, 10, D), randn(1, 4, D)
    rl = torch.tensor([0] * 5 + [2] * 5)
    with pytest.raises(ValueError, match="not both"):
        dm_loss_batched(real, syn, real_labels=rl, syn_labels=torch.tensor([0, 0, 1, 1]))
    sl = torch.tensor([0, 0, 2, 2])
    expected = dm_loss(real[:5], syn[:2]) + dm_loss(real[5:], syn[2:])
    assert torch.allclose(dm_loss_batched(real, syn, real_labels=rl, syn_labels=sl, num_classes=4), expected)
    h = hdd_loss_batched(real, syn, real_labels=rl, syn_labels=sl, num_classes=4, **HDD_KW)
    assert torch.allclose(h, hdd_loss(real[:5], syn[:2], **HDD_KW) + hdd_loss(real[5:], syn[2:], **HDD_KW))
    t = randn(2, 32, D)
    n = ncfd_batched(real, syn, t, real_labels=rl, syn_labels=sl, num_classes=4, **NCFD_KW)
    assert torch.allclose(n, ncfd(real[:5], syn[:2], t, **NCFD_KW) + ncfd(real[5:], syn[2:], t, **NCFD_KW))


@pytest.mark.parametrize("seed", SEEDS)
def test_all_present_path_equals_the_checked_path(seed):
    """With chunk-local labels that cover every class on both sides, ``all_present=True`` (no check, no mask: no
    read-back on a GPU) gives exactly the checked path's DM, HDD and NCFD losses, and their gradients."""
    real, syn = randn(seed, 12, D), randn(seed + 1, 6, D).requires_grad_(True)
    rl, sl = torch.arange(3).repeat_interleave(4), torch.arange(3).repeat_interleave(2)
    t = randn(seed + 2, 16, D)
    losses = {
        "dm": lambda **kw: dm_loss_batched(real, syn, real_labels=rl, syn_labels=sl, num_classes=3, **kw),
        "hdd": lambda **kw: hdd_loss_batched(real, syn, real_labels=rl, syn_labels=sl, num_classes=3, **HDD_KW, **kw),
        "ncfd": lambda **kw: ncfd_batched(real, syn, t, real_labels=rl, syn_labels=sl, num_classes=3, **NCFD_KW, **kw),
    }
    for name, fn in losses.items():
        checked, fast = fn(), fn(all_present=True)
        (g_checked,) = torch.autograd.grad(checked, syn)
        (g_fast,) = torch.autograd.grad(fast, syn)
        assert torch.equal(checked, fast) and torch.equal(g_checked, g_fast), name
    with pytest.raises(ValueError, match="needs num_classes"):
        dm_loss_batched(real, syn, real_labels=rl, syn_labels=sl, all_present=True)


# --------------------------------------------------------------------------------------------- HDD


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("k", "lam"), ((1.0, 20.0), (2.4, 100.0), (2.0, 100.0), (0.5, 500.0)))
def test_hdd_loss_equals_klein_closed_form_when_clamp_active(seed, k, lam):
    """With all feature norms > 10*sqrt(k), hdd_loss = lambda * klein_closed_form to ~1e-10 (§3.3)."""
    real, syn = large_norm(seed, 128, 64, k=k), large_norm(seed + 7, 10, 64, k=k)
    loss = hdd_loss(real, syn, k=k, scale=lam, clamp_radius=10.0)
    oracle = lam * klein_closed_form(real, syn, k=k, clamp_radius=10.0)
    assert loss.dtype == torch.float64
    assert abs(float(loss) - float(oracle)) < 1e-10 * max(1.0, lam)


@pytest.mark.parametrize("seed", SEEDS)
def test_hdd_loss_float32_input_is_computed_in_float64(seed):
    """float32 features give a float32 loss equal to the float64 computation rounded to float32."""
    real, syn = large_norm(seed, 64, D, k=1.0), large_norm(seed + 3, 4, D, k=1.0)
    l32 = hdd_loss(real.float(), syn.float(), **HDD_KW)
    l64 = hdd_loss(real.float().double(), syn.float().double(), **HDD_KW)
    assert l32.dtype == torch.float32
    assert float(l32) == pytest.approx(float(l64), rel=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clamp", (10.0, None))
def test_hdd_batched_equals_sum_of_per_class(seed, clamp):
    """hdd_loss_batched (stacked and indexed) equals the sum of per-class hdd_loss."""
    kw = dict(k=2.4, scale=100.0, clamp_radius=clamp)
    real, syn = randn(seed, 3, 40, D, dtype=torch.float64), randn(seed + 1, 3, 5, D, dtype=torch.float64)
    per_class = sum(hdd_loss(real[c], syn[c], **kw) for c in range(3))
    assert torch.allclose(hdd_loss_batched(real, syn, **kw), per_class, rtol=1e-10)
    rf, rl, sf, sl = _indexed(real, syn, seed)
    assert torch.allclose(
        hdd_loss_batched(rf, sf, real_labels=rl, syn_labels=sl, **kw), per_class, rtol=1e-10
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("k", "clamp", "norm"), ((1.0, 10.0, 30.0), (1.0, 10.0, 3.0), (2.4, None, 2.0),
                                                  (0.5, 10.0, 9.0)))
def test_hdd_loss_gradient_matches_finite_differences(seed, k, clamp, norm):
    """The autograd gradient of the HDD loss w.r.t. the synthetic features equals central finite differences
    in float64, with the clamp active (norm 30 > 10), inactive (norm 3), absent, and half the points on each
    side of the cap (norms spread around 9 for k = 0.5, cap 7.07)."""
    g = torch.Generator().manual_seed(seed)

    def points(n: int) -> torch.Tensor:
        f = torch.randn(n, 8, generator=g, dtype=torch.float64)
        return f / f.norm(dim=1, keepdim=True) * norm * (0.7 + 0.6 * torch.rand(n, 1, generator=g, dtype=torch.float64))

    real, syn = points(24), points(5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: hdd_loss(real, s, k=k, scale=3.0, clamp_radius=clamp), (syn,),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- NCFD


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ncfd_half_half_is_plain_cf_distance(seed, dtype):
    """With alpha = beta = 0.5, NCFD = mean_t |Phi_r(t) - Phi_s(t)| / sqrt(2) (complex oracle)."""
    real, syn, t = (
        randn(seed, 50, D, dtype=dtype),
        randn(seed + 1, 4, D, dtype=dtype),
        randn(seed + 2, 64, D, dtype=dtype),
    )
    oracle = (cf(real, t) - cf(syn, t)).abs().mean() / math.sqrt(2.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(float(ncfd(real, syn, t, **NCFD_KW)) - float(oracle)) < tol


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alpha", "beta"), ((0.9, 0.1), (4 / 7, 3 / 7), (1.0, 0.0), (0.2, 2.0)))
def test_ncfd_matches_amplitude_phase_formula(seed, alpha, beta):
    """NCFD equals mean_t sqrt(alpha (|Pr|-|Ps|)^2 + beta 2|Pr||Ps|(1 - cos(arg Pr - arg Ps))) via atan2."""
    real, syn, t = (randn(seed + i, n, D, dtype=torch.float64) for i, n in enumerate((50, 4, 64)))
    pr, ps = cf(real, t), cf(syn, t)
    amp = (pr.abs() - ps.abs()) ** 2
    phase = 2 * pr.abs() * ps.abs() * (1 - torch.cos(torch.angle(pr) - torch.angle(ps)))
    oracle = torch.sqrt(alpha * amp + beta * phase.clamp_min(1e-12)).mean()
    assert float(ncfd(real, syn, t, alpha=alpha, beta=beta)) == pytest.approx(float(oracle), abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alpha", "beta"), ((0.5, 0.5), (0.9, 0.1)))
def test_ncfd_float32_is_accurate_for_nearly_equal_sets(seed, alpha, beta):
    """For nearly identical real/syn sets (tiny phase gaps), float32 NCFD agrees with float64 to 1 %:
    the phase term has no |P| - Re P cancellation floor."""
    real, t = randn(seed, 256, 64), randn(seed + 1, 512, 64)
    syn = real + 1e-3 * randn(seed + 2, 256, 64)
    v32 = float(ncfd(real, syn, t, alpha=alpha, beta=beta))
    v64 = float(ncfd(real.double(), syn.double(), t.double(), alpha=alpha, beta=beta))
    assert v32 == pytest.approx(v64, rel=1e-2)


@pytest.mark.parametrize("seed", SEEDS)
def test_ncfd_normalize_switch_uses_raw_or_unit_features(seed):
    """normalize=False feeds raw features to Phi; the default equals raw NCFD of the unit-normalised
    features, and the two differ for features off the unit sphere (the switch is live)."""
    real, syn, t = (randn(seed + i, n, D, dtype=torch.float64) for i, n in enumerate((30, 4, 16)))
    unit = (real / real.norm(dim=-1, keepdim=True), syn / syn.norm(dim=-1, keepdim=True))
    default = ncfd(real, syn, t, **NCFD_KW)
    assert torch.allclose(default, ncfd(*unit, t, normalize=False, **NCFD_KW), rtol=1e-12)
    raw = ncfd(real, syn, t, normalize=False, **NCFD_KW)
    oracle = (cf_raw(real, t) - cf_raw(syn, t)).abs().mean() / math.sqrt(2.0)
    assert float(raw) == pytest.approx(float(oracle), abs=1e-10) and abs(float(raw - default)) > 1e-3
    rl, sl = torch.zeros(30, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    batched = ncfd_batched(real, syn, t, real_labels=rl, syn_labels=sl, normalize=False, **NCFD_KW)
    assert torch.allclose(batched, raw, rtol=1e-12)


def cf_raw(f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Empirical characteristic function of raw (unnormalised) features: ``mean_i exp(j <t, f_i>)``."""
    return torch.exp(1j * (f @ t.T)).mean(0)


@pytest.mark.parametrize("seed", SEEDS)
def test_ncfd_batched_equals_sum_of_per_class(seed):
    """ncfd_batched (shared t, per-class t, indexed) equals the sum of per-class ncfd; ncfm = scale * ncfd."""
    real, syn = randn(seed, 3, 40, D, dtype=torch.float64), randn(seed + 1, 3, 5, D, dtype=torch.float64)
    t = randn(seed + 2, 32, D, dtype=torch.float64)
    per_class = sum(ncfd(real[c], syn[c], t, **NCFD_KW) for c in range(3))
    assert torch.allclose(ncfd_batched(real, syn, t, **NCFD_KW), per_class, rtol=1e-12)
    rf, rl, sf, sl = _indexed(real, syn, seed)
    assert torch.allclose(ncfd_batched(rf, sf, t, real_labels=rl, syn_labels=sl, **NCFD_KW), per_class)
    tk = randn(seed + 3, 3, 32, D, dtype=torch.float64)
    per_class_t = sum(ncfd(real[c], syn[c], tk[c], **NCFD_KW) for c in range(3))
    assert torch.allclose(ncfd_batched(real, syn, tk, **NCFD_KW), per_class_t, rtol=1e-12)
    assert torch.allclose(
        ncfm_loss(real[0], syn[0], t, scale=300.0, **NCFD_KW), 300.0 * ncfd(real[0], syn[0], t, **NCFD_KW)
    )
    assert torch.allclose(ncfm_loss_batched(real, syn, t, scale=300.0, **NCFD_KW), 300.0 * per_class)


# --------------------------------------------------------------------------------------------- gradients


def _losses():
    t = randn(99, 128, D)
    return {
        "dm": (lambda r, s: dm_loss(r, s), 0.2),
        "dm_batched": (lambda r, s: dm_loss_batched(r.view(2, -1, D), s.view(2, -1, D)), 0.2),
        "hdd": (lambda r, s: hdd_loss(r, s, **HDD_KW), 0.5),
        "hdd_batched": (lambda r, s: hdd_loss_batched(r.view(2, -1, D), s.view(2, -1, D), **HDD_KW), 0.5),
        "ncfm": (lambda r, s: ncfm_loss(r, s, t, scale=1.0, **NCFD_KW), 10.0),
        "ncfm_batched": (
            lambda r, s: ncfm_loss_batched(r.view(2, -1, D), s.view(2, -1, D), t, scale=1.0, **NCFD_KW),
            10.0,
        ),
    }


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(_losses()))
def test_gradients_reach_syn_only_and_descent_decreases_loss(seed, name):
    """Each loss back-propagates to the synthetic features (not the real ones), and a few steps of
    gradient descent on the synthetic features decrease it (HDD with its clamp active)."""
    fn, lr = _losses()[name]
    scale = 1.0 if not name.startswith("hdd") else 20.0  # HDD: norms ~80 > 10, clamp active
    real = randn(seed, 64, D, scale=scale).requires_grad_(True)
    syn = randn(seed + 1, 8, D, scale=scale).add_(2.0 * scale / math.sqrt(D)).requires_grad_(True)
    loss0 = fn(real, syn)
    loss0.backward()
    assert real.grad is None
    assert syn.grad is not None and torch.isfinite(syn.grad).all() and float(syn.grad.abs().sum()) > 0
    opt = torch.optim.SGD([syn], lr=lr * scale**2 if name.startswith("hdd") else lr)
    for _ in range(5):
        opt.zero_grad()
        fn(real, syn).backward()
        opt.step()
    assert float(fn(real, syn).detach()) < 0.9 * float(loss0.detach())


# --------------------------------------------------------------------------------------------- sampling net


def test_gaussian_frequencies_are_seeded():
    """gaussian_frequencies gives [F, D] N(0, I) draws that depend only on the generator's seed."""
    a = gaussian_frequencies(64, D, generator=torch.Generator().manual_seed(3))
    b = gaussian_frequencies(64, D, generator=torch.Generator().manual_seed(3))
    assert a.shape == (64, D) and a.dtype == torch.float32 and torch.equal(a, b)


def test_mixture_sampler_starts_as_standard_normal():
    """At initialisation the mixture sampler (log-scales 0) reproduces gaussian_frequencies exactly."""
    psi = FrequencySampler(64, D, kind="mixture", seed=0)
    t = psi(torch.Generator().manual_seed(5))
    assert t.shape == (64, D)
    assert torch.equal(t, gaussian_frequencies(64, D, generator=torch.Generator().manual_seed(5)))


def test_code_sampler_shape_bounds_and_tiling():
    """The code-faithful sampler outputs [F, D] in [-1, 1] with F/16 distinct rows tiled, seeded init."""
    psi = FrequencySampler(64, D, kind="code", seed=1)
    t = psi(torch.Generator().manual_seed(2))
    assert t.shape == (64, D) and float(t.detach().abs().max()) <= 1.0
    assert torch.equal(t[:4], t[4:8]) and torch.equal(t[:4], t[60:])
    again = FrequencySampler(64, D, kind="code", seed=1)(torch.Generator().manual_seed(2))
    assert torch.equal(t, again)


@pytest.mark.parametrize("kind", ("mixture", "code"))
@pytest.mark.parametrize("seed", range(3))
def test_psi_step_ascends_ncfd(kind, seed):
    """One psi_step after backward increases the NCFD at the same noise draw (min-max ascent)."""
    psi = FrequencySampler(64, D, kind=kind, seed=seed)
    opt = build_psi_optimizer(psi, lr=0.05, momentum=0.5)
    real, syn = randn(seed, 50, D), randn(seed + 1, 4, D)

    def value() -> torch.Tensor:
        return ncfm_loss(real, syn, psi(torch.Generator().manual_seed(seed)), scale=1.0, **NCFD_KW)

    before = value()
    before.backward()
    psi_step(opt)
    assert all(p.grad is None for p in psi.parameters())
    assert float(value().detach()) > float(before.detach())


def test_psi_step_requires_a_maximising_optimizer():
    """psi_step refuses an optimizer that would descend instead of ascend."""
    psi = FrequencySampler(32, D, seed=0)
    with pytest.raises(ValueError, match="build_psi_optimizer"):
        psi_step(torch.optim.SGD(psi.parameters(), lr=0.1))
