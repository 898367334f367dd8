"""Differentiable augmentations: DSA (Siamese and per-sample), NCFM/IDC variants, CutMix."""

from ddcore.augment.cutmix import CutMixDraw, apply_cutmix, cutmix, draw_cutmix
from ddcore.augment.dsa import (
    DEFAULT_STRATEGY,
    FAMILIES,
    DSAOp,
    DSAParams,
    DSARanges,
    apply,
    apply_each,
    draw_ncfm_eval_params,
    draw_params,
    draw_sequence,
    dsa,
    idc_augment,
    ncfm_eval_augment,
    parse_strategy,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "FAMILIES",
    "CutMixDraw",
    "DSAOp",
    "DSAParams",
    "DSARanges",
    "apply",
    "apply_each",
    "apply_cutmix",
    "cutmix",
    "draw_cutmix",
    "draw_ncfm_eval_params",
    "draw_params",
    "draw_sequence",
    "dsa",
    "idc_augment",
    "ncfm_eval_augment",
    "parse_strategy",
]
