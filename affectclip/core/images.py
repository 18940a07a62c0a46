"""Decoding image files that may be hostile or broken: the one place pixels come out of an image file.

Why one home: every reader (manifests, shards, frame folders, `data faces`, `predict`) must refuse a decompression
bomb by the size its header declares BEFORE decoding it, turn every decoder failure into one `ImageDecodeError`
naming the file (so a long job counts the sample and goes on), and map high-bit-depth images to 8 bits by their
real range: PIL's `convert("RGB")` clips 16-bit values at 255 (a 16-bit PNG comes out white) and float images in
[0, 1] to 0 or 1 (black).
"""

from __future__ import annotations

import warnings
from typing import IO, Any

import numpy as np

# Largest image decoded (width × height, ~67 megapixels, ~200 MB as RGB): far above any face dataset, far below
# the 100k × 100k PNG of a decompression bomb. Checked from the header, before a single pixel is decoded.
MAX_PIXELS = 2**26


class ImageDecodeError(ValueError):
    """An image that cannot (or must not) be decoded; the message names it and says what to do."""


def _name(source: Any, what: str | None) -> str:
    return what or str(getattr(source, "name", None) or source)


def open_checked(source: str | Any | IO[bytes], what: str | None = None, max_pixels: int = MAX_PIXELS):
    """Open an image (path or binary file object) reading its header only; refuse empty or oversize images.

    The caller decodes (and closes) it; `what` names the image in messages (default: the path)."""
    from PIL import Image

    name = _name(source, what)
    try:
        with warnings.catch_warnings():  # PIL warns about large images; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name}: refused, the image is too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 — a decoder fed garbage may raise anything; all mean "not an image"
        raise ImageDecodeError(f"{name}: cannot read this image ({_reason(exc)}); replace or delete it") from None
    width, height = im.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        im.close()
        raise ImageDecodeError(f"{name}: refused, the image declares {width}x{height} pixels (limit {max_pixels:,} "
                               "pixels); resize it or drop it")
    return im


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_uint8(im) -> np.ndarray:
    """Pixels of a 16-bit integer or float image scaled to uint8 by their real range ([0, 65535] and [0, 1] or
    [0, 255]); other modes go through PIL's own conversion. Grey images come back [H, W]."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"integer pixel values in [{values.min()}, {values.max()}] are outside 0-65535")
        return np.round(values / 257.0).astype(np.uint8)
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the image holds NaN or infinite pixel values")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0.0 or high > 255.0:
            raise ValueError(f"float pixel values in [{low:.3g}, {high:.3g}]; expected [0, 1] or [0, 255]")
        return np.round(values * (255.0 if high <= 1.0 else 1.0)).astype(np.uint8)
    return np.asarray(im.convert("L") if mode in ("1", "L") else im.convert("RGB"))


def _decode(source: Any, what: str | None, max_pixels: int) -> np.ndarray:
    name = _name(source, what)
    im = open_checked(source, what, max_pixels)
    try:
        with im:
            return _to_uint8(im)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 — truncated/corrupt data fails inside the codec with any type
        raise ImageDecodeError(f"{name}: cannot decode this image ({_reason(exc)}); replace or delete it") from None


def decode_rgb(source: str | Any | IO[bytes], what: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3] (grey replicated, alpha dropped); `ImageDecodeError` when it cannot."""
    pixels = _decode(source, what, max_pixels)
    return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3])


def decode_grey(source: str | Any | IO[bytes], what: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as uint8 grey [H, W] (subject masks: non-zero = subject); `ImageDecodeError` when it cannot."""
    pixels = _decode(source, what, max_pixels)
    if pixels.ndim == 3:
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, :3])).convert("L"))
    return pixels


def image_size(source: str | Any | IO[bytes], what: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone; `ImageDecodeError` for a file no reader accepts or an oversize one."""
    with open_checked(source, what, max_pixels) as im:
        return im.size
