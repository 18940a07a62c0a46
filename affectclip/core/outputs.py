"""Output paths: checked before any work starts, and names derived from inputs confined to the output folder.

Why: a job that encodes a thousand videos and then finds its output folder read-only (or `--out` naming a folder)
has wasted all of it; and an input named `...mp4` or `a/../../x.mp4` must never turn into a write outside the
folder the user named. Writing itself goes through `affectclip.core.io` (temp file + rename).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from affectclip.core.errors import UserError
from affectclip.core.paths import confined


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_writable_dir(folder: Path, option: str, shown: Path) -> None:
    """`folder` (an existing folder) accepts a new file: tried for real, since permission bits lie for root and
    read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".affectclip-write-check-", dir=folder)
    except OSError as exc:
        raise UserError(f"{option} {shown}: cannot write into {folder} ({exc.strerror or exc}); choose a writable "
                        "location") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """A folder the job will create or fill: not an existing file, and writable (or creatable). Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, but a folder is needed; choose a folder name")
    anchor = _first_existing(path)
    if not anchor.is_dir():
        raise UserError(f"{option} {path}: {anchor} is a file, so no folder can be created there")
    _check_writable_dir(anchor, option, path)
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """A file the job will write at the end: not a folder, its folder writable (or creatable). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, but a file name is needed (e.g. {path / 'results.csv'})")
    if path.name in ("", ".", ".."):
        raise UserError(f"{option} {path}: not a file name")
    check_output_dir(path.parent if str(path.parent) else Path("."), option)
    return path


def safe_relative_name(name: str) -> str:
    """An output name derived from an input name, as a relative POSIX path without `..`, `.` or empty parts
    (`...mp4` has the stem `..`): each such part becomes underscores, so it names a folder *inside* the output."""
    parts = []
    for part in name.replace("\\", "/").replace("\x00", "_").split("/"):
        if part in ("", ".", ".."):
            part = "_" * max(1, len(part))
        parts.append(part)
    return "/".join(parts)


def output_path(out: str | os.PathLike, name: str, what: str) -> Path:
    """`out / name` for a name derived from an input, made safe and checked to stay inside `out`."""
    return confined(out, safe_relative_name(name), what)


def display_path(path: str | os.PathLike) -> str:
    """A path as text every UTF-8 writer accepts: bytes that are not UTF-8 (a non-UTF-8 file name on Linux comes
    back from the OS as surrogate escapes) are shown as `\\xNN` instead of failing the CSV or JSON written last."""
    text = os.fspath(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
