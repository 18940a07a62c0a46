"""Server limits and the address/token rule, checked before anything is loaded.

Safe by default: the server binds to loopback; any other address needs a token (`--token` or the environment
variable `AFFECTCLIP_SERVE_TOKEN`), because the API runs a model on whatever a client uploads.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from affectclip.core.errors import ConfigError

TOKEN_ENV = "AFFECTCLIP_SERVE_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """Every limit a client can run into; the defaults suit one workstation (2+ cores)."""

    token: str | None = None
    loopback_only: bool = True  # accept only loopback Host headers (no DNS-rebinding from web pages)
    max_upload_mb: float = 100.0
    max_video_seconds: float = 600.0
    max_image_pixels: int = 40_000_000
    max_frame_bytes: int = 2_000_000  # one webcam frame over the WebSocket
    max_queue: int = 8  # quick work (images, webcam frames) waiting for the model
    max_jobs: int = 4  # video jobs waiting (not counting the one running)
    max_finished_jobs: int = 32  # finished jobs whose results stay downloadable (oldest dropped first)
    job_ttl_s: float = 3600.0
    retry_after_s: int = 2
    temp_dir: Path | None = None  # uploads are written under a fresh folder here (default: the system temp dir)

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_video_seconds", "max_image_pixels", "max_frame_bytes", "max_queue",
                     "max_jobs", "max_finished_jobs", "job_ttl_s", "retry_after_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve setting {name} must be > 0, got {getattr(self, name)}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the serve token must have at least 8 characters; e.g. python -c "
                              "'import secrets; print(secrets.token_urlsafe())'")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1; a hostname other than 'localhost' is not trusted to be local."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: `token`, else $AFFECTCLIP_SERVE_TOKEN; serving beyond loopback without one is an error."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise ConfigError(f"serving on {host} (beyond this machine) needs a token: pass --token T or set {TOKEN_ENV}; "
                          "every request must then carry it")
    return token
