"""Encoding and decoding of sample fields, with explicit, non-pickling decoders.

Only these fields exist in a ddflow shard: ``png`` (uint8 image), ``npy`` / ``soft.npy`` (float32
arrays, ``allow_pickle=False``), ``cls`` (ASCII integer) and ``json`` (UTF-8 JSON). Any other member
in a shard is refused, so a shard carrying ``.pyd`` / ``.pickle`` members is never decoded.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
from PIL import Image

from ddcore.errors import DataError

#: Largest image (in pixels) we decode; PIL's own bomb check uses the same ceiling.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

ALLOWED_FIELDS = frozenset({"png", "npy", "soft.npy", "cls", "json"})


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image deterministically (no timestamps, fixed compression).

    Args:
        image: uint8 ``[H, W]`` or ``[H, W, C]`` with C in {1, 3, 4}.

    Returns:
        PNG bytes; identical input gives identical bytes.
    """
    if image.dtype != np.uint8:
        raise DataError(f"image dtype must be uint8, got {image.dtype}; convert before encoding")
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


#: PIL modes with more than 8 bits per sample: converting them to uint8 clips every value above 255.
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def decode_png(data: bytes, *, channels: int | None = None) -> np.ndarray:
    """Decode PNG bytes to uint8 ``[H, W, C]``; refuse decompression bombs and non-images.

    Args:
        data: encoded image bytes (PNG or any PIL-readable format).
        channels: force 1 (L) or 3 (RGB) channels; ``None`` keeps 1 for greyscale, else 3.
    """
    return decode_image(data, channels=channels)[0]


def decode_image(data: bytes, *, channels: int | None = None) -> tuple[np.ndarray, str]:
    """:func:`decode_png`, also returning the image's own PIL mode (``"P"``, ``"CMYK"``, ``"I;16"``...), so that a
    caller can tell what was converted to ``L``/``RGB``."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; refuse those images too, whatever the warning filters
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"image of {w}x{h} pixels exceeds the {MAX_IMAGE_PIXELS} pixel limit; "
                    "resize it before ingesting"
                )
            source_mode = img.mode
            mode = {1: "L", 3: "RGB"}.get(channels or 0)
            if mode is None:
                mode = "L" if img.mode in ("L", "1", "I;16", "I") else "RGB"
            arr = np.asarray(img.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"refused a decompression bomb: {exc}") from None
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot decode image: {exc}") from None
    return (arr[:, :, None] if arr.ndim == 2 else arr), source_mode


def encode_npy(array: np.ndarray) -> bytes:
    """Serialise an array as .npy bytes without pickle."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Read .npy bytes; object arrays (which would need pickle) are refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"refused an .npy member that needs pickle or is malformed: {exc}") from None


def encode_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, compact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_sample(raw: dict[str, Any], *, channels: int | None = None) -> dict[str, Any]:
    """Decode one raw WebDataset sample (field -> bytes) with our explicit decoders.

    Unknown or unsafe fields raise :class:`DataError` instead of being decoded.
    """
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name.startswith("__"):
            out[name] = value
            continue
        if name not in ALLOWED_FIELDS:
            raise DataError(
                f"refused shard member '{raw.get('__key__', '?')}.{name}': only "
                f"{sorted(ALLOWED_FIELDS)} are allowed (pickle-like members are never decoded)"
            )
        if name == "png":
            out[name] = decode_png(value, channels=channels)
        elif name.endswith("npy"):
            out[name] = decode_npy(value)
        elif name == "cls":
            out[name] = int(value.decode("ascii").strip())
        else:
            out[name] = json.loads(value.decode("utf-8"))
    return out
