"""What an upload really is, from its bytes: never from the client's file name or Content-Type.

Only container formats with a fixed signature are accepted. That also keeps FFmpeg away from its text formats
(HLS playlists, concat lists), which name other files or URLs: the server never opens a path a client names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sniffed:
    kind: str  # "image" | "video"
    format: str
    suffix: str  # the suffix the saved file gets, so the decoders see the type the bytes say


HEAD_BYTES = 64  # enough for every signature below


def sniff(head: bytes) -> Sniffed | None:
    """The media type of a file from its first bytes, or None when it is not a supported image or video."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "jpeg", ".jpg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "png", ".png")
    if head.startswith(b"BM") and len(head) >= 26:
        return Sniffed("image", "bmp", ".bmp")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "webp", ".webp")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "avi", ".avi")
    if head[4:8] == b"ftyp":
        return Sniffed("video", "mp4", ".mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "matroska", ".mkv")
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return Sniffed("video", "asf", ".wmv")
    if head.startswith(b"FLV\x01"):
        return Sniffed("video", "flv", ".flv")
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return Sniffed("video", "mpeg", ".mpg")
    return None
