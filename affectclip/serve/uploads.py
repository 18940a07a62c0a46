"""Uploads -> something the model can read, with every limit applied and every temporary file accounted for.

Images never touch the disk here (decoded from memory, Pillow restricted to the sniffed format). A video is written
to a fresh folder under the server's temp root, probed (duration, size), and handed to a job that removes the
folder when it ends; when any check fails the folder is removed before the error is answered.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from affectclip.serve.settings import ServeSettings
from affectclip.serve.sniff import HEAD_BYTES, Sniffed, sniff

CHUNK = 1 << 20
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}
SUPPORTED = "an image (JPEG, PNG, BMP, WebP) or a video (MP4/MOV, WebM/MKV, AVI, WMV, FLV, MPEG)"


@dataclass
class Upload:
    name: str  # the client's file name, for display only (never used as a path)
    sniffed: Sniffed
    data: bytes | None = None  # images
    folder: Path | None = None  # videos: the folder to remove
    path: Path | None = None
    duration: float = 0.0
    fps: float = 0.0

    def redact(self, text: str) -> str:
        """`text` with the server's temp path of this upload replaced by the client's name."""
        return text.replace(str(self.path), self.name) if self.path is not None else text

    def label_rows(self, df: pd.DataFrame) -> pd.DataFrame:
        """Result rows as the client sees them: its file name as `source`, no server path in `status`."""
        df["source"] = self.name
        df["status"] = df["status"].map(self.redact)
        return df

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def display_name(filename: str | None) -> str:
    """The last path component of a client's file name, printable characters only, at most 120 of them."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:120].strip()
    return name or "upload"


def too_large(what: str, limit: str, option: str) -> HTTPException:
    return HTTPException(413, f"{what} is over the limit of {limit} ({option})")


async def receive(file: UploadFile, settings: ServeSettings) -> Upload:
    """Sniff and store an upload; 415 for anything that is not a supported image or video, 413 when too large."""
    name = display_name(file.filename)
    head = await file.read(HEAD_BYTES)
    if not head:
        raise HTTPException(400, f"{name}: the file is empty")
    sniffed = sniff(head)
    if sniffed is None:
        raise HTTPException(415, f"{name}: not {SUPPORTED} (judged by its content, not its name)")
    limit = settings.max_upload_bytes
    limit_text = f"{settings.max_upload_mb:g} MB"
    if sniffed.kind == "image":
        data = head + await file.read(limit + 1 - len(head))
        if len(data) > limit:
            raise too_large(name, limit_text, "--max-upload-mb")
        return Upload(name, sniffed, data=data)
    folder = Path(tempfile.mkdtemp(prefix="affectclip-serve-", dir=settings.temp_dir))
    upload = Upload(name, sniffed, folder=folder, path=folder / f"upload{sniffed.suffix}")
    try:
        size = 0
        with open(upload.path, "wb") as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limit:
                    raise too_large(name, limit_text, "--max-upload-mb")
                out.write(chunk)
                chunk = await file.read(CHUNK)
        await run_in_threadpool(_check_video, upload, settings)
    except BaseException:
        upload.cleanup()
        raise
    return upload


def _check_video(upload: Upload, settings: ServeSettings) -> None:
    from affectclip.data.video import VideoError, probe

    try:
        info = probe(upload.path)
    except VideoError as exc:  # its messages already say what is wrong and what to do
        raise HTTPException(400, f"{upload.name}: {_reason(exc, upload)}") from exc
    except OSError as exc:
        raise HTTPException(400, f"{upload.name}: not a readable video ({_reason(exc, upload)})") from exc
    duration = info.duration or (info.n_frames / info.fps if info.fps else 0.0)
    if not duration > 0 or not math.isfinite(duration):
        raise HTTPException(400, f"{upload.name}: the video's duration cannot be read; re-encode it (e.g. to MP4)")
    if duration > settings.max_video_seconds:
        raise too_large(f"{upload.name}: the video ({duration:.0f} s)", f"{settings.max_video_seconds:g} s",
                        "--max-video-seconds")
    if info.width * info.height > settings.max_image_pixels:
        raise too_large(f"{upload.name}: the frame size {info.width}x{info.height}",
                        f"{settings.max_image_pixels} pixels", "--max-image-pixels")
    upload.duration, upload.fps = duration, info.fps


def _reason(exc: BaseException, upload: Upload) -> str:
    """A decoder's message without the server's temp path."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return upload.redact(text.replace(f"{upload.path}: ", ""))


def decode_image(upload: Upload, settings: ServeSettings) -> np.ndarray:
    """The uploaded image as uint8 RGB, decoded with Pillow restricted to the sniffed format; 400/413 on failure."""
    from PIL import Image

    from affectclip.infer.media import to_rgb_uint8

    try:
        with Image.open(io.BytesIO(upload.data), formats=[PIL_FORMATS[upload.sniffed.format]]) as img:
            if img.width * img.height > settings.max_image_pixels:
                raise too_large(f"{upload.name}: the image ({img.width}x{img.height})",
                                f"{settings.max_image_pixels} pixels", "--max-image-pixels")
            img.load()
            return to_rgb_uint8(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPException(400, f"{upload.name}: cannot decode this {upload.sniffed.format} image ({exc})") from exc


def expected_frames(upload: Upload, fps: float | None) -> int:
    """Frames a video job will read at `fps` (None = every frame), for its progress fraction."""
    if fps and upload.fps > fps:
        return max(1, math.ceil(upload.duration * fps))
    return max(1, round(upload.duration * upload.fps)) if upload.fps else 0
