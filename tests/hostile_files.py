"""Crafted hostile and broken files, generated in the tests (never committed): decompression bombs, high-bit-depth
images, tar shards with escaping or oversize members, tiny videos. Shared by test_data_hostile.py and
test_fuzz_hostile.py."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares width × height RGB pixels (30 GB decoded) but holds ~100 bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def gradient16() -> np.ndarray:
    """A 16-bit grey ramp over the whole 0-65535 range (uint16 [32, 64])."""
    return (np.linspace(0, 65535, 32 * 64).reshape(32, 64)).round().astype(np.uint16)


def write_png16(path: Path) -> np.ndarray:
    values = gradient16()
    Image.fromarray(values).save(path)
    return values


def write_float_tiff(path: Path) -> np.ndarray:
    values = np.linspace(0.0, 1.0, 16 * 24, dtype=np.float32).reshape(16, 24)
    Image.fromarray(values).save(path)
    return values


def tar_with(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar holding the given (name, bytes) members exactly as named (tarfile does not sanitise names on write)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_declaring_huge_member(path: Path, name: str = "big.png", size: int = 6 * 2**30) -> Path:
    """A tar whose first member's header declares `size` bytes (default 6 GB) but whose file stops after a few
    bytes: reading the member would try to allocate it all; a reader must refuse it from the header."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + b"\x00" * 1024)
    return path


def write_video(path: Path, n: int = 6, fps: int = 10, size: tuple[int, int] = (32, 24)) -> Path:
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), (i * 30) % 250, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root (symlinks not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out
