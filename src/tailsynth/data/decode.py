"""Decode one image (file or array) to a square uint8 array (H, W, C) of the configured size and channels.

Conversion rules, applied in this order:
1. 16-bit images (PIL modes ``I;16*`` and ``I``, e.g. 16-bit grayscale PNG) are scaled to 8 bit by
   ``round(x * 255 / 65535)``; float images (mode ``F``) are clipped to 0..255.
2. Transparency (RGBA, LA, PA, palette with a transparent colour) is alpha-composited on WHITE, so
   transparent background becomes white (a light microscopy/scan background), not black.
3. Palette, CMYK, YCbCr, 1-bit etc. go through PIL's ``convert``: to ``L`` (ITU-R 601-2 luma) for
   1 channel or to ``RGB`` for 3 channels.
4. Geometry: centre crop to a square (side = the shorter side), then bicubic resize to ``image_size``.
   For JPEG files PIL's draft mode first lets the decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain
   while the result stays at least ``image_size`` on the short side (fast, nearly identical output).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently padded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class CorruptImage(Exception):
    """Raised by :func:`decode_file` for an unreadable or truncated file (the caller names the file)."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in SIXTEEN_BIT_MODES:
        x = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(x * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _square_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    return img


def pil_to_array(img: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """A decoded PIL image -> uint8 (image_size, image_size, channels) following the module rules."""
    img = _flatten_alpha(_to_8bit(img))
    img = _square_resize(_to_channels(img, channels), image_size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_file(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """Decode one image file; raise :class:`CorruptImage` if it cannot be read completely."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("L" if channels == 1 else "RGB", (image_size, image_size))
            img.load()
            return pil_to_array(img, image_size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImage(f"{path}: {err}") from err


def decode_many(paths: list[str], image_size: int, channels: int) -> tuple[np.ndarray, list[int]]:
    """Decode a list of files into one array; corrupt files give zero images and their positions."""
    out = np.zeros((len(paths), image_size, image_size, channels), dtype=np.uint8)
    corrupt: list[int] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_file(path, image_size, channels)
        except CorruptImage:
            corrupt.append(i)
    return out, corrupt


def array_to_uint8(x: np.ndarray) -> np.ndarray:
    """An image array of any common dtype -> uint8: uint16 scaled by 255/65535, floats in [0, 1]
    scaled by 255 (other floats clipped to 0..255), bool -> 0/255."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if x.dtype == np.uint16:
        return np.rint(x.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    xf = x.astype(np.float64)
    if np.issubdtype(x.dtype, np.floating) and xf.size and xf.min() >= 0.0 and xf.max() <= 1.0:
        xf = xf * 255.0
    return np.clip(np.rint(xf), 0, 255).astype(np.uint8)


def convert_array(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images (C in 1, 3, 4) -> uint8 (N, image_size, image_size, channels)."""
    x = array_to_uint8(images)
    if x.ndim == 3:
        x = x[:, :, :, None]
    n, h, w, c = x.shape
    if h == w == image_size and c == channels:
        return np.ascontiguousarray(x)
    out = np.empty((n, image_size, image_size, channels), dtype=np.uint8)
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    for i in range(n):
        img = Image.fromarray(x[i, :, :, 0] if c == 1 else x[i], modes[c])
        out[i] = pil_to_array(img, image_size, channels)
    return out
