"""DSA: Siamese consistency, per-sample variation, differentiability, exact geometry; CutMix."""

from __future__ import annotations

import pytest
import torch

from ddcore.augment import (
    FAMILIES,
    DSAOp,
    DSAParams,
    apply,
    apply_cutmix,
    apply_each,
    cutmix,
    draw_cutmix,
    draw_ncfm_eval_params,
    draw_params,
    draw_sequence,
    dsa,
    idc_augment,
    parse_strategy,
)
from ddcore.errors import ConfigError, DataError

SHAPE = (3, 32, 32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_params_give_identical_transform_to_real_and_synthetic_batches(family: str) -> None:
    """One Siamese draw applied to a real batch (6) and a synthetic batch (3) equals applying it to their concat."""
    real, syn = torch.randn(6, *SHAPE), torch.randn(3, *SHAPE)
    for seed in range(4):
        params = draw_params(family, batch=6, image_shape=SHAPE, generator=gen(seed), siamese=True)
        together = apply(torch.cat([real, syn]), params)
        apart = torch.cat([apply(real, params), apply(syn, params)])
        torch.testing.assert_close(together, apart, rtol=0, atol=1e-6)
        # and the same image gets the same result whichever batch it is in
        torch.testing.assert_close(apply(real[:1], params), apply(syn[:1].clone().copy_(real[:1]), params))


@pytest.mark.parametrize("family", FAMILIES)
def test_per_sample_mode_varies_across_samples(family: str) -> None:
    """Without Siamese mode, one image replicated 16 times is augmented differently across the batch."""
    x = torch.randn(1, *SHAPE).expand(16, *SHAPE)
    params = draw_params(family, batch=16, image_shape=SHAPE, generator=gen(1), siamese=False)
    out = apply(x, params)
    diffs = (out - out[:1]).flatten(1).abs().amax(1)
    assert (diffs > 1e-4).any()
    assert all(v.shape[0] == 16 for v in params.ops[0].values.values() if v.numel() > 1)


@pytest.mark.parametrize("siamese", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_dsa_is_differentiable_and_pure(family: str, siamese: bool) -> None:
    """Gradients reach the input through every family in both modes, and the input is not modified."""
    x = torch.randn(4, *SHAPE, requires_grad=True)
    snapshot = x.detach().clone()
    params = draw_params(family, batch=4, image_shape=SHAPE, generator=gen(2), siamese=siamese)
    out = apply(x, params)
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(x.detach(), snapshot)


def test_crop_is_an_integer_shift_with_zero_fill() -> None:
    """Crop with dy=2, dx=-1 moves content by whole pixels and fills the uncovered border with zeros."""
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8) + 1
    params = DSAParams((DSAOp("crop", {"dy": torch.tensor([2]), "dx": torch.tensor([-1])}),), True, (2, 8, 8), 1)
    out = apply(x, params)
    torch.testing.assert_close(out[0, :, :6, 1:], x[0, :, 2:, :7])
    assert (out[0, :, 6:, :] == 0).all() and (out[0, :, :, 0] == 0).all()


def test_cutout_zeroes_one_square_of_half_the_side() -> None:
    """Cutout at 32 px zeroes exactly a 16×16 square when the centre is away from the border."""
    x = torch.ones(1, *SHAPE)
    op = DSAOp("cutout", {"top": torch.tensor([5]), "left": torch.tensor([7]), "height": torch.tensor([16]),
                          "width": torch.tensor([16])})
    out = apply(x, DSAParams((op,), True, SHAPE, 1))
    assert int((out[0, 0] == 0).sum()) == 16 * 16
    assert (out[0, :, 5:21, 7:23] == 0).all()
    drawn = draw_params("cutout", batch=1, image_shape=SHAPE, generator=gen(0), siamese=True)
    assert int(drawn.ops[0].values["height"]) == 16


def test_identity_geometry_is_exact() -> None:
    """Scale 1 and rotation 0 reproduce the input (align_corners=False sampling at pixel centres)."""
    x = torch.randn(2, *SHAPE)
    scale = DSAParams((DSAOp("scale", {"sx": torch.ones(1), "sy": torch.ones(1)}),), True, SHAPE, 2)
    rot = DSAParams((DSAOp("rotate", {"angle": torch.zeros(1)}),), True, SHAPE, 2)
    torch.testing.assert_close(apply(x, scale), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply(x, rot), x, atol=1e-5, rtol=0)


def test_one_family_per_call_all_families_reachable_and_seeded() -> None:
    """Each draw uses one family of the strategy; all are drawn over many calls; same seed → same draw."""
    g = gen(0)
    seen = set()
    for _ in range(200):
        p = draw_params("color_crop_cutout_flip_scale_rotate", batch=2, image_shape=SHAPE, generator=g,
                        siamese=True)
        assert len(p.ops) == 1
        seen.add(p.families[0])
    assert seen == set(FAMILIES)
    a = draw_params("scale_rotate", batch=3, image_shape=SHAPE, generator=gen(9), siamese=False)
    b = draw_params("scale_rotate", batch=3, image_shape=SHAPE, generator=gen(9), siamese=False)
    assert a.families == b.families
    assert all(torch.equal(a.ops[0].values[k], b.ops[0].values[k]) for k in a.ops[0].values)


def test_strategy_parsing_and_none() -> None:
    """Unknown families are a ConfigError; 'none' is the identity."""
    with pytest.raises(ConfigError):
        parse_strategy("color_blur")
    x = torch.randn(2, *SHAPE)
    assert torch.equal(dsa(x, "none", generator=gen()), x)


def test_apply_rejects_wrong_batch_or_shape() -> None:
    """Per-sample params need the same batch size, and all params need the same image shape (DataError)."""
    params = draw_params("rotate", batch=4, image_shape=SHAPE, generator=gen(), siamese=False)
    with pytest.raises(DataError):
        apply(torch.randn(3, *SHAPE), params)
    with pytest.raises(DataError):
        apply(torch.randn(4, 1, 28, 28), params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_application_equals_one_call_per_batch(seed: int) -> None:
    """apply_each gives, batch by batch, exactly what apply gives: Siamese and per-sample draws, one family
    and IDC-style sequences, batches of different sizes, the same family drawn by several batches; the
    gradient reaches every input batch."""
    g = gen(seed)
    sizes = [3, 1, 4, 2, 5, 3, 2, 1, 4, 2, 3, 1]
    xs = [torch.randn(n, *SHAPE, generator=g).requires_grad_(i % 2 == 0) for i, n in enumerate(sizes)]
    params = [draw_params("color_crop_cutout_flip_scale_rotate", batch=n, image_shape=SHAPE, generator=g,
                          siamese=i % 3 != 0) for i, n in enumerate(sizes[:8])]
    params += [draw_sequence(("color", "crop", "cutout"), batch=n, image_shape=SHAPE, generator=g,
                             siamese=i == 0) for i, n in enumerate(sizes[8:])]
    assert len({p.families for p in params}) < len(params)  # some batches share a group
    want = [apply(x, p) for x, p in zip(xs, params, strict=True)]
    got = apply_each(xs, params)
    assert [tuple(y.shape) for y in got] == [tuple(y.shape) for y in want]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    sum(y.square().sum() for y in got).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs if x.requires_grad)


def test_grouped_application_checks_each_batch() -> None:
    """apply_each refuses a per-sample draw of the wrong size and a count mismatch, as apply does."""
    params = [draw_params("rotate", batch=4, image_shape=SHAPE, generator=gen(), siamese=False)] * 2
    with pytest.raises(DataError):
        apply_each([torch.randn(4, *SHAPE), torch.randn(3, *SHAPE)], params)
    with pytest.raises(ValueError, match="one per batch"):
        apply_each([torch.randn(4, *SHAPE)], params)


def test_idc_augment_applies_color_crop_cutout_with_shared_params() -> None:
    """IDC-style augmentation draws all of color, crop, cutout once and applies them to the whole batch."""
    params = draw_sequence(parse_strategy("color_crop_cutout"), batch=5, image_shape=SHAPE, generator=gen(3),
                           siamese=True)
    assert params.families == ("color", "crop", "cutout")
    x = torch.randn(5, *SHAPE)
    torch.testing.assert_close(apply(x, params), torch.cat([apply(x[:2], params), apply(x[2:], params)]))
    out = idc_augment(x, generator=gen(3))
    torch.testing.assert_close(out, apply(x, params))


def test_ncfm_eval_params_are_flip_color_and_one_geometric_per_sample() -> None:
    """The NCFM evaluation draw is flip, color, then one of crop/scale/rotate, with per-sample values."""
    for seed in range(6):
        p = draw_ncfm_eval_params(batch=8, image_shape=SHAPE, generator=gen(seed))
        assert p.families[:2] == ("flip", "color") and p.families[2] in ("crop", "scale", "rotate")
        assert not p.siamese and p.ops[1].values["brightness"].shape == (8,)


def test_cutmix_pastes_partner_box_and_reports_area_lambda() -> None:
    """With p=1 CutMix pastes x[perm] inside the box, keeps x outside, and λ = 1 − box area; p=0 is identity."""
    x = torch.randn(6, *SHAPE, requires_grad=True)
    draw = draw_cutmix(6, (32, 32), generator=gen(4), prob=1.0)
    assert draw.applied
    out = apply_cutmix(x, draw)
    box = torch.zeros(32, 32, dtype=torch.bool)
    box[draw.top : draw.bottom, draw.left : draw.right] = True
    torch.testing.assert_close(out[:, :, box], x[draw.perm][:, :, box])
    torch.testing.assert_close(out[:, :, ~box], x[:, :, ~box])
    assert abs(draw.lam - (1 - box.float().mean().item())) < 1e-9
    out.sum().backward()
    assert x.grad is not None
    same, perm, lam = cutmix(x, generator=gen(4), prob=0.0)
    assert same is x and lam == 1.0 and torch.equal(perm, torch.arange(6))
