"""Reading one image file for an ImageFolder ingest: decode, convert, resize, and keep a JPEG's bytes when it can.

A module of its own, importing neither torch nor webdataset, so that the ingest's worker processes
(:mod:`ddcore.data.workers`) start in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ddcore.data.codec import HIGH_BIT_DEPTH_MODES, decode_image
from ddcore.errors import DataError


@dataclass(frozen=True)
class LoadOptions:
    """How every image of one ingest is read.

    Attributes:
        shape: the artifact's ``(C, H, W)``.
        resize: resize images of another size to ``(H, W)`` (bilinear) instead of refusing them.
        allow_16bit: convert images of more than 8 bits per sample, clipping; ``False`` refuses them.
        keep_jpeg: keep the bytes of a JPEG that needs no conversion or resize.
    """

    shape: tuple[int, int, int]
    resize: bool
    allow_16bit: bool
    keep_jpeg: bool


def load_image_file(path: Path, opts: LoadOptions) -> tuple[np.ndarray, str, tuple[str, bytes] | None]:
    """``(image, mode, encoded)``: uint8 ``[H, W, C]`` in the artifact's mode and size, the file's own PIL mode,
    and ``("jpg", <the file's bytes>)`` when a JPEG is kept as it is (else ``None``).

    Raises:
        DataError: an undecodable image, one of more than 8 bits (unless allowed), or of another size (unless
            resizing); one line naming the file and the fix.
    """
    c, h, w = opts.shape
    data = path.read_bytes()
    try:
        img, mode = decode_image(data, channels=c)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    if mode in HIGH_BIT_DEPTH_MODES and not opts.allow_16bit:
        raise DataError(f"{path} has more than 8 bits per sample (mode {mode}) and converting it to 8 bits clips "
                        "every value above 255; save 8-bit images, or pass --allow-16bit (source option "
                        "allow_16bit: true) to convert anyway")
    target = "L" if c == 1 else "RGB"
    resized = False
    if opts.resize and img.shape[:2] != (h, w):
        pil = Image.fromarray(img[:, :, 0] if c == 1 else img, mode=target)
        img = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
        img, resized = (img[:, :, None] if img.ndim == 2 else img), True
    if img.shape != (h, w, c):
        raise DataError(f"{path} is {img.shape[1]}x{img.shape[0]}, expected {w}x{h}; set resize: [H, W] in the "
                        "source config or fix the image")
    keep = opts.keep_jpeg and not resized and mode == target and data[:2] == b"\xff\xd8"
    return img, mode, ("jpg", data) if keep else None
