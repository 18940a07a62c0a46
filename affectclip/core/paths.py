"""Paths named inside files (manifests, run state, indexes) stay inside the folder they belong to, unless the user
explicitly allows otherwise: a file must never steer a read or write to `../../etc/passwd`."""

from __future__ import annotations

import os
from pathlib import Path

from affectclip.core.errors import UserError


def confined(base: str | os.PathLike, relative: str | os.PathLike, what: str, allow_outside: bool = False) -> Path:
    """`base / relative`, resolved (symlinks followed); a `UserError` naming `what` when it leaves `base`.

    `allow_outside=True` is the user's explicit opt-in (absolute paths and `..` then resolve as written)."""
    base = Path(base)
    target = base / relative
    if allow_outside:
        return target
    root = base.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{what} points outside {base} ({relative}); keep files inside that folder or allow "
                        "reading outside it explicitly")
    return target
