"""Cross-site protection: only this server's own pages may change anything, and none may be framed.

A page on another origin can make the browser post to this server: an HTML form needs no CORS preflight,
and a SameSite=Strict cookie still goes along from another port of the same host (same-site is not
same-origin). Without keys, on loopback, no cookie is even needed. So two independent checks:

- ``SameOriginGuard`` (ASGI, outermost) refuses a state-changing request, and any WebSocket handshake,
  that a browser says came from elsewhere: ``Sec-Fetch-Site`` other than ``same-origin``/``none``, or,
  from browsers that do not send it, an ``Origin`` other than this server's own (scheme and Host).
  A request with neither header is not from a browser (curl, httpx, the CLI) and carries no ambient
  credentials worth forging, so it passes. This is the check Go's ``http.CrossOriginProtection`` makes.
- ``FormTokens``: every state-changing form carries a token, an HMAC of the browser's session under a
  secret made at start-up, that a page on another origin cannot read. The form routes refuse without it.

Every response also says it may not be framed (``X-Frame-Options``, CSP ``frame-ancestors``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
TRUSTED_FETCH_SITES = frozenset({b"same-origin", b"none"})  # "none": the user typed the address
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
CROSS_SITE = "cross-origin request refused: only this server's own pages may change documents or sign in"
FORM_FIELD = "csrf"
EXPIRED_FORM = "this form has expired or came from another site: reload the page and try again"


def cross_origin(scope) -> str | None:
    """Why a browser request is not from this server's own origin, or None if it is (or is no browser's)."""
    headers = dict(scope["headers"])
    fetch_site = headers.get(b"sec-fetch-site")
    if fetch_site is not None:
        return None if fetch_site.lower() in TRUSTED_FETCH_SITES else f"Sec-Fetch-Site: {fetch_site.decode('latin-1')}"
    origin = headers.get(b"origin")
    if origin is None:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    own = f"{scheme}://{headers.get(b'host', b'').decode('latin-1')}".lower()
    return None if origin.decode("latin-1").lower() == own else f"Origin: {origin.decode('latin-1')}"


class SameOriginGuard:
    """ASGI middleware: 403 for a cross-origin state-changing request; anti-framing headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and cross_origin(scope):
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before the handshake
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS and (why := cross_origin(scope)):
            body = json.dumps({"detail": f"{CROSS_SITE} ({why})"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 403, "headers": headers + SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = message | {"headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


class FormTokens:
    """The token of the forms a browser was served, bound to its session cookie (none before sign-in)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token(self, session: str | None) -> str:
        return hmac.new(self._secret, b"form:" + (session or "").encode(), hashlib.sha256).hexdigest()

    def valid(self, token: str, session: str | None) -> bool:
        return hmac.compare_digest(token.encode(), self.token(session).encode())
