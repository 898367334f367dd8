"""Image grids: one row per class, for eyeballing a dataset or a synthetic set."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ddcore.data.artifact import DatasetArtifact
from ddcore.data.codec import MAX_IMAGE_PIXELS
from ddcore.errors import ConfigError, DataError

MAX_GRID_PIXELS = MAX_IMAGE_PIXELS
"""Largest grid drawn (width x height): the same ceiling as the largest image ddflow decodes."""


def make_grid(images_by_class: list[np.ndarray], *, scale: int = 2, pad: int = 2,
              labels: list[str] | None = None, label_width: int = 90) -> Image.Image:
    """Tile uint8 images ``[n_c, H, W, C]`` per class into rows; returns an RGB PIL image."""
    h, w, _ = next(a for a in images_by_class if len(a)).shape[1:]
    cols = max(len(a) for a in images_by_class)
    lw = label_width if labels else 0
    size = (lw + cols * (w * scale + pad) + pad, len(images_by_class) * (h * scale + pad) + pad)
    if size[0] * size[1] > MAX_GRID_PIXELS:
        raise DataError(f"a grid of {size[0]}x{size[1]} pixels exceeds the {MAX_GRID_PIXELS} pixel limit; "
                        "lower --scale or --per-class")
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, imgs in enumerate(images_by_class):
        y = pad + r * (h * scale + pad)
        if labels:
            draw.text((4, y + h * scale // 2 - 5), labels[r][:14], fill=(0, 0, 0))
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("RGB")
            tile = tile.resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (lw + pad + c * (w * scale + pad), y))
    return canvas


def artifact_grid(artifact: DatasetArtifact, *, split: str = "train", per_class: int = 10, seed: int = 0,
                  scale: int = 2) -> Image.Image:
    """A grid of ``per_class`` images of every class, drawn with a fixed seed.

    Raises:
        ConfigError: ``per_class`` or ``scale`` below 1, or a negative ``seed`` (named as ``ddflow show``'s options).
        DataError: the grid would exceed :data:`MAX_GRID_PIXELS`.
    """
    for option, value, low in (("--per-class", per_class, 1), ("--scale", scale, 1), ("--seed", seed, 0)):
        if value < low:
            raise ConfigError(f"{option} {value} is out of range; pass {low} or more")
    rng = np.random.default_rng(seed)
    rows = []
    for idx in artifact.class_rows(split):
        pick = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)) if len(idx) else idx
        arr = artifact.read_arrays(pick) if len(pick) else np.zeros((0, 1, 1, 1), np.uint8)
        if artifact.meta.storage == "npy" and len(pick):
            m = np.asarray(artifact.meta.mean, np.float32).reshape(1, -1, 1, 1)
            s = np.asarray(artifact.meta.std, np.float32).reshape(1, -1, 1, 1)
            arr = (np.clip(arr * s + m, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        rows.append(arr)
    return make_grid(rows, scale=scale, labels=artifact.meta.classes)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
