"""Encoding and decoding of sample fields, with explicit, non-pickling decoders.

Only these fields exist in a ddflow shard: ``png`` (uint8 image), ``npy`` / ``soft.npy`` (float32
arrays, ``allow_pickle=False``), ``cls`` (ASCII integer) and ``json`` (UTF-8 JSON); the user's shards indexed in
place add encoded images (``jpg``, ``webp``...), decoded by PIL like ``png``. Any other member in a shard is
refused, so a shard carrying ``.pyd`` / ``.pickle`` members is never decoded.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from ddcore.errors import DataError

#: Largest image (in pixels) we decode; PIL's own bomb check uses the same ceiling.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

ALLOWED_FIELDS = frozenset({"png", "npy", "soft.npy", "cls", "json"})
IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "ppm", "bmp")
"""Encoded-image fields read from WebDataset shards, in order of preference when a sample has several."""
ENCODED_IMAGES = frozenset(IMAGE_FIELDS) - {"png"}
LABEL_FIELDS = ("cls", "label")
"""Fields a WebDataset sample may carry its integer class in."""
SAFE_EXTRA = frozenset({"json", "txt", *LABEL_FIELDS, *IMAGE_FIELDS})
"""Every member field read from the user's shards; any other (``pyd``, ``pickle``, ``pth``...) is refused."""
"""Image fields of shards indexed in place (``layout: in_place``), decoded like ``png``."""


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


def check_member_key(key: str, member: str, where: str) -> None:
    """Refuse a shard sample key that is an absolute path or has a '..' component (``../x.png``, ``/abs.png``):
    nothing is extracted, but such names only come from a crafted or broken tar. ``member`` names it in the error.

    Raises:
        DataError: one line naming the member, the shard ``where`` and the fix.
    """
    if key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/"):
        raise DataError(f"refused shard member {member!r} in {where}: member names must be relative paths without "
                        "'..' (path traversal); re-create the shard with plain member names")


def parse_label(fields: Mapping[str, bytes], who: str) -> int:
    """The integer class of a shard sample from its first label field (:data:`LABEL_FIELDS`); ``who`` names the
    sample in errors (``sample 'k0009'``).

    Raises:
        DataError: no label field, or one that is not an integer.
    """
    for f in LABEL_FIELDS:
        if f in fields:
            try:
                return int(bytes(fields[f]).decode().strip())
            except ValueError:
                text = bytes(fields[f])[:40].decode(errors="replace")
                raise DataError(f"{who}: label {text!r} is not an integer; store the class index as decimal digits "
                                "(e.g. 3)") from None
    raise DataError(f"{who} has no 'cls' label member; add <key>.cls with the class index")


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
        if name not in ALLOWED_FIELDS and name not in ENCODED_IMAGES:
            raise DataError(
                f"refused shard member '{raw.get('__key__', '?')}.{name}': only "
                f"{sorted(ALLOWED_FIELDS)} are allowed (pickle-like members are never decoded)"
            )
        if name == "png" or name in ENCODED_IMAGES:
            out[name] = decode_png(value, channels=channels)
        elif name.endswith("npy"):
            out[name] = decode_npy(value)
        elif name == "cls":
            out[name] = int(value.decode("ascii").strip())
        else:
            out[name] = json.loads(value.decode("utf-8"))
    return out
