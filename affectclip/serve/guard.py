"""The ASGI gate every HTTP request and WebSocket passes before any route: Host, token, Origin, body size.

* **Host**: served on loopback without a token, only loopback Host headers are answered, so a web page cannot
  reach the server through a DNS name rebound to 127.0.0.1.
* **Token** (when set): `Authorization: Bearer T`, `X-Affectclip-Token: T`, `?token=T` or the
  `affectclip_token_<port>` cookie. Opening the page once with `?token=T` sets that cookie (HttpOnly,
  SameSite=Strict; named by port because browsers send a host's cookies to all its ports), so the page, its
  downloads and its WebSocket carry it without the token living in JavaScript.
* **Origin** (WebSockets, which browsers let any page open): a browser's Origin must be this server.
* **Body size**: a declared Content-Length over the limit is refused before reading; a body streamed without one is
  counted and cut off, so an upload can never fill the disk.
"""

from __future__ import annotations

import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from affectclip.serve.settings import ServeSettings, is_loopback

COOKIE = "affectclip_token"
BODY_SLACK = 1 << 20  # multipart boundaries and form fields around the file


class BodyTooLarge(Exception):
    pass


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1'."""
    return urlsplit(f"//{host_header}").hostname or ""


def presented_token(scope: Scope, headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "x-affectclip-token" in headers:
        return headers["x-affectclip-token"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        return query[0]
    cookie, name = SimpleCookie(headers.get("cookie", "")), cookie_name(scope)
    return cookie[name].value if name in cookie else None


def cookie_name(scope: Scope) -> str:
    server = scope.get("server") or ("", 0)
    return f"{COOKIE}_{server[1]}"


class Guard:
    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._check(scope, headers)
        if problem is not None:
            status, message = problem
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            else:
                await JSONResponse({"error": message}, status)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._http(scope, receive, send, headers)

    def _check(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = _host_name(headers.get("host", ""))
        if self.settings.loopback_only and not is_loopback(host):
            return 400, f"Host '{host}' is not served: this server answers on loopback only (open http://127.0.0.1)"
        if scope["type"] == "websocket" and "origin" in headers:
            origin = urlsplit(headers["origin"]).netloc
            if origin != headers.get("host"):
                return 403, f"WebSocket from another site ({headers['origin']}) refused"
        if self.settings.token is not None:
            token = presented_token(scope, headers)
            if token is None:
                return 401, "missing token: send 'Authorization: Bearer TOKEN' (or open the page with ?token=TOKEN)"
            if not secrets.compare_digest(token.encode(), self.settings.token.encode()):
                return 403, "wrong token"
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        limit = self.settings.max_upload_bytes + BODY_SLACK
        too_large = f"request body over the {self.settings.max_upload_mb:g} MB upload limit (--max-upload-mb)"
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await JSONResponse({"error": too_large}, 413)(scope, receive, send)
            return
        set_cookie = self.settings.token is not None and b"token=" in scope.get("query_string", b"")
        received, cut, replaced = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, cut
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if cut and message["type"] == "http.response.start":  # the app turned the cut-off into its own error
                replaced = True
                await JSONResponse({"error": too_large}, 413)(scope, receive, send)
                return
            if set_cookie and message["type"] == "http.response.start":
                cookie = f"{cookie_name(scope)}={self.settings.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                await JSONResponse({"error": too_large}, 413)(scope, receive, send)
