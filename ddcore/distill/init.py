"""Initial synthetic images and NCFM multi-formation (2x2 mosaics).

All functions are deterministic given a seed; images are float32 ``[N, C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ddcore.errors import DataError
from ddcore.sampling import RealSampler
from ddcore.seeding import iteration_generator


def check_ipc(sampler: RealSampler, ipc: int, *, need: int = 1) -> None:
    """IPC larger than a class's sample count is an error (we never repeat real images)."""
    for c in range(sampler.num_classes):
        n = sampler.class_size(c)
        if n < ipc * need:
            raise DataError(
                f"class {c} has {n} real samples but IPC {ipc} needs {ipc * need}; lower ipc "
                "or use init: noise"
            )


def initial_images(sampler: RealSampler, *, ipc: int, init: str, seed: int,
                   classes: Sequence[int] | None = None) -> torch.Tensor:
    """``[len(classes) * ipc, C, H, W]`` normalised images, class-major: real samples, noise, or 2x2 mosaics.

    Class ``c`` draws from its own generator ``(seed, -1, "init:c")``, so a class group gets the same
    initial images as in a run over every class. For ``mix`` the result is in normalised space too;
    each image is a mosaic of four real images of its class, each downsampled by 2 (multi-formation).
    """
    classes = list(range(sampler.num_classes)) if classes is None else list(classes)
    c, h, w = sampler.image_shape
    need = 4 if init == "mix" else 1
    if init != "noise":
        check_ipc(sampler, ipc, need=need)
    out = []
    for cls in classes:
        generator = iteration_generator(seed, -1, f"init:{cls}")
        if init == "noise":
            out.append(torch.randn(ipc, c, h, w, generator=generator))
            continue
        imgs = sampler.sample(cls, ipc * need, generator)
        if init == "mix":
            small = F.interpolate(imgs, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
            imgs = tile_mosaic(small.view(ipc, 4, c, h // 2, w // 2), h, w)
        out.append(imgs)
    return torch.cat(out)


def tile_mosaic(parts: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[N, 4, C, h/2, w/2]`` -> ``[N, C, h, w]`` (quadrants in reading order; odd sizes zero-padded)."""
    n, _, c, hh, ww = parts.shape
    out = parts.new_zeros(n, c, h, w)
    out[:, :, :hh, :ww] = parts[:, 0]
    out[:, :, :hh, ww : 2 * ww] = parts[:, 1]
    out[:, :, hh : 2 * hh, :ww] = parts[:, 2]
    out[:, :, hh : 2 * hh, ww : 2 * ww] = parts[:, 3]
    return out


def decode_factor(images: torch.Tensor, labels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-formation decoding: each ``[C, H, W]`` mosaic -> ``factor²`` crops upsampled to ``H x W``.

    Args:
        images: ``[N, C, H, W]``.
        labels: ``[N]``.
        factor: 1 (identity) or 2.

    Returns:
        ``([N * factor², C, H, W], [N * factor²])``, crops of one mosaic consecutive.
    """
    if factor == 1:
        return images, labels
    if factor != 2:
        raise DataError(f"factor must be 1 or 2, got {factor}")
    n, c, h, w = images.shape
    hh, ww = h // 2, w // 2
    crops = torch.stack(
        [images[:, :, :hh, :ww], images[:, :, :hh, ww : 2 * ww], images[:, :, hh : 2 * hh, :ww],
         images[:, :, hh : 2 * hh, ww : 2 * ww]], dim=1,
    ).reshape(n * 4, c, hh, ww)
    up = F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)
    return up, labels.repeat_interleave(4)
