"""Media the serve tests write themselves: a short video and a Y4M webcam clip made from the example photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "astronaut.jpg"


def photo_frames(n: int, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """`n` RGB frames: the example photo on a grey canvas, drifting a few pixels per frame (a face that moves)."""
    w, h = size
    face = Image.open(PHOTO).convert("RGB").resize((h, h))
    frames = []
    for i in range(n):
        canvas = Image.new("RGB", (w, h), (128, 128, 128))
        canvas.paste(face, ((w - h) // 2 + 2 * (i % 10) - 10, 0))
        frames.append(np.asarray(canvas))
    return frames


def write_video(path: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """An MPEG-4 (.mp4) clip of `photo_frames`."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for frame in photo_frames(round(seconds * fps), size):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_y4m(path: Path, n: int = 20, fps: int = 10, size: tuple[int, int] = (640, 480)) -> Path:
    """A YUV4MPEG2 (4:2:0) clip for Chromium's fake camera (`--use-file-for-fake-video-capture`)."""
    w, h = size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in photo_frames(n, size):
            y, cb, cr = Image.fromarray(frame).convert("YCbCr").split()
            out.write(b"FRAME\n" + y.tobytes())
            out.write(cb.resize((w // 2, h // 2), Image.BILINEAR).tobytes())
            out.write(cr.resize((w // 2, h // 2), Image.BILINEAR).tobytes())
    return path
