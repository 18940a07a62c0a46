"""Deterministic sample media for demos, tests and benchmarks: a real face on a textured 640×480 canvas, and a
video of it moving.

The face is scikit-image's astronaut (public domain, NASA), so face detectors find it as they would in a photo;
scikit-image is a development dependency (`pip install 'affectclip[dev]'`), imported only when a face is drawn.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 640, 480


@lru_cache(maxsize=8)
def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    canvas = np.stack([(xx // 3) % 256, (yy // 2) % 256, ((xx + yy) // 4) % 256], -1).astype(np.int16)
    return np.clip(canvas + rng.integers(-20, 20, canvas.shape), 0, 255).astype(np.uint8)


@lru_cache(maxsize=2)
def _head(face_size: int) -> np.ndarray:
    from PIL import Image

    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("sample faces need scikit-image: pip install 'affectclip[dev]'") from exc

    head = data.astronaut()[0:300, 100:400]  # the face sits at about (180, 70)-(270, 160) of the original
    return np.asarray(Image.fromarray(head).resize((face_size, face_size)))


def face_canvas(x: int = 200, y: int = 80, face_size: int = 240, seed: int = 0) -> np.ndarray:
    """A 640×480 RGB frame: a textured background with skimage's astronaut (head and shoulders) pasted at (x, y)."""
    canvas = _background(seed).copy()
    canvas[y : y + face_size, x : x + face_size] = _head(face_size)
    return canvas


def write_moving_face_video(
    path: Path, seconds: float, fps: int = 30, travel: int = 300, codec: str = "libx264"
) -> Path:
    """A video of `face_canvas` whose face slides `travel` px right and back over the clip (smoothly, so
    consecutive sampled frames overlap and IoU tracking keeps one face id)."""
    import av

    n = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}  # writing the input is not what is measured
        for i in range(n):
            x = int(60 + travel * (0.5 - 0.5 * np.cos(2 * np.pi * i / max(n, 1))))
            frame = av.VideoFrame.from_ndarray(face_canvas(x=x, seed=i % 4), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
