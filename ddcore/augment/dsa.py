"""Differentiable Siamese Augmentation (DSA, docs/methods.md §1.3) as draw-then-apply pure functions.

:func:`draw_params` picks one family of the strategy string (e.g. ``color_crop_cutout_flip_scale_rotate``)
and draws its parameters from an explicit ``torch.Generator``; :func:`apply` applies them to a batch
and is differentiable with respect to the images. In Siamese mode one parameter set (leading size 1)
is broadcast to every image, so applying the same :class:`DSAParams` to a real batch and a synthetic
batch of different sizes gives the identical transform. Without Siamese mode the parameters are drawn
per sample (leading size ``batch``). Broadcasting replaces the reference code's "copy element 0 to
the whole batch" assignment, which fails on recent PyTorch (aliasing in-place write).

Images are float32 ``[B, C, H, W]`` in normalised space. Families:

- ``color``: brightness x + (u − ½)·1.0, then saturation (x − mean_C)·2u + mean_C, then contrast
  (x − mean_CHW)·(u + ½) + mean_CHW, with a fresh u ~ U(0, 1) each.
- ``crop``: integer translation by up to round(0.125·H) px per axis, zero fill.
- ``cutout``: zero a round(0.5·H)-sided square at a random centre (clipped at the border).
- ``flip``: horizontal flip with probability ½.
- ``scale``: affine scaling with sx, sy ~ U(1/1.2, 1.2), bilinear ``grid_sample`` with zero padding.
- ``rotate``: rotation by U(−15°, 15°), bilinear ``grid_sample`` with zero padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddcore.errors import ConfigError, DataError

FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSARanges:
    """Magnitudes of the DSA families (reference defaults of ``ParamDiffAug``)."""

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    scale: float = 1.2
    rotate_deg: float = 15.0


@dataclass(frozen=True)
class DSAOp:
    """One family with its drawn values; each value is a CPU tensor of leading size 1 or B."""

    family: str
    values: dict[str, torch.Tensor]


@dataclass(frozen=True)
class DSAParams:
    """A drawn augmentation: ops applied in order to ``[B, *image_shape]`` batches.

    ``siamese`` means every value has leading size 1 and any batch size is accepted; otherwise the
    leading size is ``batch`` and :func:`apply` requires exactly that many images.
    """

    ops: tuple[DSAOp, ...]
    siamese: bool
    image_shape: tuple[int, int, int]
    batch: int

    @property
    def families(self) -> tuple[str, ...]:
        """Family names of the ops, in application order."""
        return tuple(op.family for op in self.ops)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Family names of ``strategy`` (``'a_b_c'``); ``''``/``'none'`` is empty. Unknown → ConfigError."""
    s = strategy.strip().lower()
    if s in ("", "none"):
        return ()
    fams = tuple(s.split("_"))
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise ConfigError(
            f"unknown DSA family '{bad[0]}' in strategy '{strategy}'; use '_'-joined names from: "
            f"{', '.join(FAMILIES)}"
        )
    return fams


def _shape3(shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise DataError(f"image_shape must be (C, H, W), got {tuple(shape)}; pass x.shape[1:]")
    c, h, w = (int(v) for v in shape)
    return c, h, w


def _rand(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def draw_op(
    family: str, *, n: int, image_shape: tuple[int, int, int], generator: torch.Generator, ranges: DSARanges
) -> DSAOp:
    """Draw the values of one family for ``n`` images (``n = 1`` for Siamese use)."""
    _, h, w = image_shape
    if family == "color":
        values = {
            "brightness": (_rand(n, generator) - 0.5) * ranges.brightness,
            "saturation": _rand(n, generator) * ranges.saturation,
            "contrast": _rand(n, generator) + ranges.contrast,
        }
    elif family == "crop":
        sh, sw = int(h * ranges.crop + 0.5), int(w * ranges.crop + 0.5)
        values = {
            "dy": torch.randint(-sh, sh + 1, (n,), generator=generator),
            "dx": torch.randint(-sw, sw + 1, (n,), generator=generator),
        }
    elif family == "cutout":
        ch, cw = int(h * ranges.cutout + 0.5), int(w * ranges.cutout + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=generator)
        cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=generator)
        values = {"top": cy - ch // 2, "left": cx - cw // 2, "height": torch.tensor([ch]),
                  "width": torch.tensor([cw])}
    elif family == "flip":
        values = {"flip": _rand(n, generator) < ranges.flip}
    elif family == "scale":
        lo = 1.0 / ranges.scale
        values = {
            "sx": _rand(n, generator) * (ranges.scale - lo) + lo,
            "sy": _rand(n, generator) * (ranges.scale - lo) + lo,
        }
    elif family == "rotate":
        values = {"angle": (_rand(n, generator) - 0.5) * 2.0 * math.radians(ranges.rotate_deg)}
    else:
        raise ConfigError(f"unknown DSA family '{family}'; use one of: {', '.join(FAMILIES)}")
    return DSAOp(family, values)


def draw_params(
    strategy: str,
    *,
    batch: int,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    siamese: bool,
    ranges: DSARanges = DSARanges(),
) -> DSAParams:
    """Pick ONE family of ``strategy`` uniformly at random and draw its parameters.

    Args:
        strategy: ``'_'``-joined family names; ``'none'`` gives an identity ``DSAParams``.
        batch: number of images the per-sample parameters are for (ignored shape-wise when siamese).
        image_shape: ``(C, H, W)`` of the images the params will be applied to.
        generator: CPU ``torch.Generator``; the only source of randomness.
        siamese: one parameter set for the whole batch (and for any other batch it is applied to).
    """
    fams = parse_strategy(strategy)
    shape = _shape3(image_shape)
    if not fams:
        return DSAParams((), siamese, shape, batch)
    fam = fams[int(torch.randint(len(fams), (1,), generator=generator).item())]
    n = 1 if siamese else batch
    op = draw_op(fam, n=n, image_shape=shape, generator=generator, ranges=ranges)
    return DSAParams((op,), siamese, shape, batch)


def draw_sequence(
    families: tuple[str, ...] | list[str],
    *,
    batch: int,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    siamese: bool,
    ranges: DSARanges = DSARanges(),
) -> DSAParams:
    """Draw parameters for ALL ``families`` (applied in the given order), e.g. IDC-style augmentation."""
    shape = _shape3(image_shape)
    n = 1 if siamese else batch
    ops = tuple(draw_op(f, n=n, image_shape=shape, generator=generator, ranges=ranges) for f in families)
    return DSAParams(ops, siamese, shape, batch)


def apply(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply ``params`` to float ``[B, C, H, W]`` images; pure (``x`` is not modified), differentiable."""
    _check_batch(x, params)
    for op in params.ops:
        x = _APPLY[op.family](x, {k: v.to(x.device, non_blocking=True) for k, v in op.values.items()})
    return x


def apply_each(xs: list[torch.Tensor], params: list[DSAParams]) -> list[torch.Tensor]:
    """``[apply(x, p) for x, p in zip(xs, params)]`` with one call of each op per distinct family sequence.

    The batches whose params name the same families are concatenated and transformed at once, each image
    under its own batch's values (leading size 1 broadcast over that batch), then split back. Every family
    works image by image, so the result is the per-batch one; what changes is the number of kernel launches
    and host-to-device copies: at most one per family and value instead of one per batch (a Siamese step
    over many classes on a GPU is otherwise bound by launches, not arithmetic).

    Args:
        xs: float ``[B_i, C, H, W]`` batches on one device.
        params: one :class:`DSAParams` per batch, each valid for its batch (as :func:`apply` checks).
    Returns:
        the transformed batches, in order.
    """
    if len(xs) != len(params):
        raise ValueError(f"apply_each got {len(xs)} batches but {len(params)} parameter sets; pass one per batch")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, (x, p) in enumerate(zip(xs, params, strict=True)):
        _check_batch(x, p)
        groups.setdefault(p.families, []).append(i)
    out: list[torch.Tensor] = list(xs)
    for fams, idx in groups.items():
        if not fams or len(idx) == 1:
            for i in idx:
                out[i] = apply(xs[i], params[i])
            continue
        sizes = [xs[i].shape[0] for i in idx]
        ops = tuple(DSAOp(fam, {k: _per_image([params[i].ops[j].values[k] for i in idx], sizes)
                                for k in params[idx[0]].ops[j].values})
                    for j, fam in enumerate(fams))
        merged = DSAParams(ops, siamese=False, image_shape=params[idx[0]].image_shape, batch=sum(sizes))
        for i, y in zip(idx, apply(torch.cat([xs[i] for i in idx]), merged).split(sizes), strict=True):
            out[i] = y
    return out


def _per_image(values: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """One value per image of the concatenated batches: each batch's value repeated over its ``sizes[i]`` images
    where it has leading size 1 (Siamese), taken as it is where it has one per image."""
    if all(v.shape[0] == 1 for v in values):  # Siamese draws: two host ops, however many batches
        return torch.cat(values).repeat_interleave(torch.tensor(sizes), dim=0)
    return torch.cat([v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for v, n in zip(values, sizes, strict=True)])


def _check_batch(x: torch.Tensor, params: DSAParams) -> None:
    if tuple(x.shape[1:]) != params.image_shape:
        raise DataError(
            f"DSA params were drawn for images {params.image_shape} but got {tuple(x.shape[1:])}; "
            f"draw them with the image_shape of this batch"
        )
    if not params.siamese and x.shape[0] != params.batch:
        raise DataError(
            f"per-sample DSA params were drawn for {params.batch} images but got {x.shape[0]}; "
            f"draw them with batch={x.shape[0]} or siamese=True"
        )


def dsa(
    x: torch.Tensor,
    strategy: str,
    *,
    generator: torch.Generator,
    siamese: bool = True,
    ranges: DSARanges = DSARanges(),
) -> torch.Tensor:
    """Draw params for ``x`` (one family of ``strategy``) and apply them."""
    params = draw_params(
        strategy, batch=x.shape[0], image_shape=_shape3(x.shape[1:]), generator=generator,
        siamese=siamese, ranges=ranges,
    )
    return apply(x, params)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Values ``[n]`` as ``[n, 1, 1, 1]`` in ``x``'s dtype (broadcasts over the batch when n = 1)."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    x = x + _col(v["brightness"], x)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * _col(v["saturation"], x) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _col(v["contrast"], x) + m


def _crop(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    b, c, h, w = x.shape
    dy = v["dy"].expand(b)
    dx = v["dx"].expand(b)
    xp = F.pad(x, (1, 1, 1, 1))  # zero border at index 0 and H+1 / W+1
    rows = (torch.arange(h, device=x.device).unsqueeze(0) + dy.unsqueeze(1) + 1).clamp(0, h + 1)  # [B, H]
    cols = (torch.arange(w, device=x.device).unsqueeze(0) + dx.unsqueeze(1) + 1).clamp(0, w + 1)  # [B, W]
    out = xp.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _cutout(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    _, _, h, w = x.shape
    top, left = v["top"].view(-1, 1), v["left"].view(-1, 1)
    r = torch.arange(h, device=x.device).unsqueeze(0)
    q = torch.arange(w, device=x.device).unsqueeze(0)
    in_r = (r >= top) & (r < top + v["height"].view(-1, 1))  # [n, H]
    in_c = (q >= left) & (q < left + v["width"].view(-1, 1))  # [n, W]
    keep = ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))  # [n, H, W]
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.where(v["flip"].view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    sx, sy = v["sx"], v["sy"]
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    a = v["angle"]
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    return _affine(x, theta)


_APPLY = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


# --- NCFM-style variants (docs/methods.md §4.3 and §4.6) ---------------------------------------------

IDC_STRATEGY = "color_crop_cutout"
NCFM_EVAL_GEOMETRIC: tuple[str, ...] = ("crop", "scale", "rotate")


def idc_augment(
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    strategy: str = IDC_STRATEGY,
    ranges: DSARanges = DSARanges(),
) -> torch.Tensor:
    """IDC-style augmentation used while distilling with NCFM: ALL families of ``strategy`` in order,
    one parameter set shared by the whole batch (apply it to ``cat([real, syn])`` to make it Siamese)."""
    params = draw_sequence(
        parse_strategy(strategy), batch=x.shape[0], image_shape=_shape3(x.shape[1:]),
        generator=generator, siamese=True, ranges=ranges,
    )
    return apply(x, params)


def draw_ncfm_eval_params(
    *,
    batch: int,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    ranges: DSARanges = DSARanges(),
) -> DSAParams:
    """Per-sample params of the NCFM evaluation augmentation: flip, then color, then one of
    crop/scale/rotate (chosen once per batch). No cutout: NCFM evaluation uses CutMix instead."""
    geo = NCFM_EVAL_GEOMETRIC[int(torch.randint(len(NCFM_EVAL_GEOMETRIC), (1,), generator=generator).item())]
    return draw_sequence(
        ("flip", "color", geo), batch=batch, image_shape=image_shape, generator=generator,
        siamese=False, ranges=ranges,
    )


def ncfm_eval_augment(
    x: torch.Tensor, *, generator: torch.Generator, ranges: DSARanges = DSARanges()
) -> torch.Tensor:
    """Draw :func:`draw_ncfm_eval_params` for ``x`` and apply them."""
    params = draw_ncfm_eval_params(
        batch=x.shape[0], image_shape=_shape3(x.shape[1:]), generator=generator, ranges=ranges
    )
    return apply(x, params)
