"""Image grids: one row per class, for eyeballing a dataset or a synthetic set."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ddcore.data.artifact import DatasetArtifact


def make_grid(images_by_class: list[np.ndarray], *, scale: int = 2, pad: int = 2,
              labels: list[str] | None = None, label_width: int = 90) -> Image.Image:
    """Tile uint8 images ``[n_c, H, W, C]`` per class into rows; returns an RGB PIL image."""
    h, w, _ = next(a for a in images_by_class if len(a)).shape[1:]
    cols = max(len(a) for a in images_by_class)
    lw = label_width if labels else 0
    canvas = Image.new("RGB", (lw + cols * (w * scale + pad) + pad, len(images_by_class) * (h * scale + pad) + pad),
                       (255, 255, 255))
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
    """A grid of ``per_class`` images of every class, drawn with a fixed seed."""
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
