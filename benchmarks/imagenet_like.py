"""ImageNet-shaped data, generated: N classes x M JPEG images at H x W, as an ImageFolder and as WebDataset shards.

No ImageNet can be had on this machine, so the scale benchmarks run on data of the same *format*: RGB JPEGs in
``train/<wnid>/<wnid>_<i>.JPEG`` and ``val/<wnid>/...`` folders (torchvision's ImageFolder layout), and the same
bytes as WebDataset shards laid out like the public ImageNet WebDataset mirrors (keys ``<wnid>_<n>`` in train,
``ILSVRC2012_val_<n>`` in val): numbered tar shards
``imagenet1k-train-000000.tar`` ... whose samples (shuffled across classes) are a ``jpg`` and a ``cls`` member.

Classes are learnable, so an accuracy above chance means something: each class is a distinct combination of a
shape (8 kinds), a hue (16) and a stripe-texture orientation (8), i.e. up to 1 024 classes; within a class the
shape's position, scale and brightness, the texture's phase, the background and pixel noise vary per image.
Every image is a pure function of ``(seed, split, class, index)``: the same arguments give the same bytes.

Usage: ``python -m benchmarks.imagenet_like --classes 100 --per-class 50 --val-per-class 10 --size 64 --out DIR``
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "bar", "blob")
MAX_CLASSES = len(SHAPES) * 16 * 8
SPLIT_IDS = {"train": 0, "val": 1}


def wnid(c: int) -> str:
    """The class folder name of class ``c`` (WordNet-id shaped, ``n00000042``)."""
    return f"n{c:08d}"


def class_recipe(c: int) -> tuple[str, float, float]:
    """``(shape, hue in [0, 1), stripe angle in radians)`` of class ``c``; distinct for every ``c < 1024``."""
    if not 0 <= c < MAX_CLASSES:
        raise SystemExit(f"class {c} out of range: the generator makes at most {MAX_CLASSES} distinct classes")
    shape, rest = SHAPES[c % 8], c // 8
    return shape, (rest % 16) / 16.0, (rest // 16) * np.pi / 8


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _mask(shape: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape`` on coordinates centred on the shape and scaled to its radius (float [H, W])."""
    r = np.hypot(yy, xx)
    if shape == "disc":
        return r < 1
    if shape == "square":
        return np.maximum(abs(yy), abs(xx)) < 0.85
    if shape == "triangle":
        return (yy < 0.7) & (yy > 2 * abs(xx) - 1.1)
    if shape == "ring":
        return (r < 1) & (r > 0.55)
    if shape == "cross":
        return (np.minimum(abs(yy), abs(xx)) < 0.3) & (np.maximum(abs(yy), abs(xx)) < 1)
    if shape == "diamond":
        return abs(yy) + abs(xx) < 1
    if shape == "bar":
        return (abs(yy) < 0.35) & (abs(xx) < 1)
    wobble = 1 + 0.25 * np.sin(3 * np.arctan2(yy, xx) + rng.uniform(0, 2 * np.pi))
    return r < 0.9 * wobble


def render(seed: int, split: str, c: int, i: int, size: int) -> np.ndarray:
    """Image ``i`` of class ``c`` in ``split``: uint8 ``[size, size, 3]``, a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], c, i])
    shape, hue, angle = class_recipe(c)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a dim, slowly varying colour of a random (not class-specific) hue
    bg = _hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.5))
    img = np.broadcast_to(bg, (size, size, 3)) * (0.85 + 0.3 * ys[..., None])
    # class texture: stripes at the class's angle, random phase and a little frequency jitter
    freq = 6.0 * rng.uniform(0.9, 1.1)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xs * np.cos(angle) + ys * np.sin(angle)) + rng.uniform(0, 6.3))
    # class shape: the class's hue, random position, scale and brightness
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    rad = rng.uniform(0.18, 0.32)
    mask = _mask(shape, (ys - cy) / rad, (xs - cx) / rad, rng)
    fg = _hsv_to_rgb((hue + rng.normal(0, 0.015)) % 1.0, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    img = np.where(mask[..., None], fg * (0.7 + 0.3 * stripes[..., None]), img * (0.75 + 0.25 * stripes[..., None]))
    img = img + rng.normal(0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG bytes of a uint8 ``[H, W, 3]`` image (no EXIF, no timestamps: deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def samples(seed: int, split: str, classes: int, per_class: int, size: int) -> Iterator[tuple[str, int, bytes]]:
    """``(key, class, jpeg bytes)`` of a split, class by class."""
    for c in range(classes):
        for i in range(per_class):  # keys as ImageNet's: <wnid>_<n> in train, ILSVRC2012_val_<n> in val
            key = f"{wnid(c)}_{i:06d}" if split == "train" else f"ILSVRC2012_val_{c * per_class + i + 1:08d}"
            yield key, c, encode_jpeg(render(seed, split, c, i, size))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "ddflow", "ddflow"
    tar.addfile(info, io.BytesIO(data))


def write_split(out: Path, split: str, *, seed: int, classes: int, per_class: int, size: int, shard_size: int,
                formats: tuple[str, ...], prefix: str = "imagenet1k") -> dict:
    """Write one split as an ImageFolder (``out/<split>/<wnid>/``) and/or WebDataset shards
    (``out/shards/<prefix>-<split>-NNNNNN.tar``, samples shuffled across classes with ``seed``); returns counts."""
    items = list(samples(seed, split, classes, per_class, size))
    if "folder" in formats:
        for key, c, data in items:
            d = out / split / wnid(c)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{key}.JPEG").write_bytes(data)
    n_shards = 0
    if "wds" in formats:
        order = np.random.default_rng([seed, SPLIT_IDS[split], 7]).permutation(len(items))
        (out / "shards").mkdir(parents=True, exist_ok=True)
        for n_shards, start in enumerate(range(0, len(items), shard_size), start=1):
            path = out / "shards" / f"{prefix}-{split}-{n_shards - 1:06d}.tar"
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for j in order[start : start + shard_size]:
                    key, c, data = items[j]
                    _add(tar, f"{key}.cls", str(c).encode())
                    _add(tar, f"{key}.jpg", data)
    return {"images": len(items), "shards": n_shards, "bytes": sum(len(d) for _, _, d in items)}


def generate(out: str | Path, *, classes: int, per_class: int, val_per_class: int, size: int = 64, seed: int = 0,
             shard_size: int = 1000, formats: tuple[str, ...] = ("folder", "wds")) -> dict:
    """Write the dataset under ``out`` (see the module docstring) and ``out/generator.json`` with its arguments."""
    class_recipe(classes - 1)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    args = {"classes": classes, "per_class": per_class, "val_per_class": val_per_class, "size": size, "seed": seed,
            "shard_size": shard_size, "formats": list(formats)}
    splits = {split: write_split(root, split, seed=seed, classes=classes, per_class=n, size=size,
                                 shard_size=shard_size, formats=formats)
              for split, n in (("train", per_class), ("val", val_per_class)) if n > 0}
    info = {"generator": "benchmarks.imagenet_like", **args, "splits": splits}
    (root / "generator.json").write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--formats", default="folder,wds", help="comma-separated: folder, wds")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.perf_counter()
    info = generate(a.out, classes=a.classes, per_class=a.per_class, val_per_class=a.val_per_class, size=a.size,
                    seed=a.seed, shard_size=a.shard_size, formats=tuple(a.formats.split(",")))
    n = sum(s["images"] for s in info["splits"].values())
    print(f"wrote {n} images ({a.classes} classes, {a.size}x{a.size}) to {a.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
