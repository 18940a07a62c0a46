"""Input discovery for inference: what the user passed -> a flat list of media items, each streamed as frames.

Users pass a mix of files, folders (walked recursively), PIL images and numpy arrays. Discovery never reads pixels,
so a corrupt file surfaces later as ONE error row for that file instead of aborting the whole batch. A folder that
holds `frames.json` (written by `affectclip data frames`) is a frame folder and is read as one video.
A folder is searched for the same image extensions a manifest accepts (`.tif` and `.gif` included), and a file
name that is not UTF-8 keeps its row: its `source` shows the odd bytes as backslash escapes, so the table can
still be written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affectclip.core.outputs import display_path
from affectclip.data.video import FRAMES_JSON, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, iter_frames, probe


@dataclass
class MediaItem:
    """One input: `kind` is "image" or "video"; `data` holds in-memory pixels (PIL/numpy), `path` a file or folder."""

    source: str
    kind: str
    path: Path | None = None
    data: Any = None


def _is_in_memory(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "convert") and hasattr(x, "mode"))


def _kind_of(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS:
        return "video"
    return "image"


def discover(inputs: Any) -> list[MediaItem]:
    """Flatten paths / folders / PIL images / numpy arrays (or a list of them) into media items, in input order.

    Folders are walked recursively (sorted) keeping image and video extensions only; an explicit file path is kept
    whatever its extension (a wrong one becomes an error row). A missing path raises FileNotFoundError, because it
    is a typo in the command, not a bad file inside a collection.
    """
    if isinstance(inputs, (str, os.PathLike)) or _is_in_memory(inputs):
        inputs = [inputs]
    items: list[MediaItem] = []
    n_arrays = 0
    for x in inputs:
        if _is_in_memory(x):
            items.append(MediaItem(source=f"<array {n_arrays}>", kind="image", data=x))
            n_arrays += 1
            continue
        if not isinstance(x, (str, os.PathLike)):
            raise TypeError(f"inputs must be paths, PIL images or numpy arrays, got {type(x).__name__}")
        path = Path(x)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}; check the path")
        if path.is_dir() and not (path / FRAMES_JSON).exists():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            items.extend(MediaItem(display_path(p), _kind_of(p), path=p) for p in found)
        else:
            items.append(MediaItem(display_path(path), _kind_of(path), path=path))
    return items


def to_rgb_uint8(image: Any) -> np.ndarray:
    """PIL image or numpy array (HxW, HxWx{1,3,4}; uint8, uint16 or float in [0,1]) -> contiguous uint8 [H,W,3].

    Validation is the training transform's (`image_to_tensor`), so inference accepts exactly what training does.
    """
    from affectclip.data.transforms import image_to_tensor

    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        if min(image.shape[:2]) == 0:
            raise ValueError(f"image has an empty side: shape {image.shape}; pass an image with pixels")
        return np.ascontiguousarray(image)
    t = image_to_tensor(image)  # float [3,H,W] in [0,1]
    return np.ascontiguousarray((t * 255.0).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB; an unreadable (or oversize) file raises `ImageDecodeError`, a ValueError naming
    it."""
    from affectclip.core.images import decode_rgb

    return decode_rgb(path, display_path(path))


def expected_frames(item: MediaItem, fps: float | None) -> int | None:
    """How many frames `iter_item_frames` will yield (for progress bars); None when unknown or unreadable."""
    if item.kind == "image":
        return 1
    try:
        info = probe(item.path)
    except ValueError:
        return None
    if fps and info.fps > fps and info.duration:
        return max(1, math.ceil(info.duration * fps))
    return info.n_frames


def iter_item_frames(item: MediaItem, fps: float | None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Stream `(frame_index, timestamp_s, rgb uint8)`: one frame (index 0, timestamp NaN) for a still image, the
    fps-resampled frames of a video, never holding more than one decoded frame."""
    if item.kind == "image":
        image = to_rgb_uint8(item.data) if item.data is not None else read_image(item.path)
        yield 0, math.nan, image
        return
    yield from iter_frames(item.path, fps=fps)
