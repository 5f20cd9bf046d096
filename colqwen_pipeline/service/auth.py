"""API keys of the server, their scopes, the sign-in sessions, and the one middleware that checks them.

Keys come from COLQWEN_SERVER_API_KEYS (comma-separated) and COLQWEN_SERVER_API_KEYS_FILE (one per line,
``#`` comments; for secrets mounts), each ``search:KEY`` (search, read pages and heatmaps) or ``admin:KEY``
(also upload, remove, restore). A key without a scope is an admin key, as before scopes existed, and
``serve`` logs that this is deprecated. Keys are compared in constant time and never logged.

Every route declares the access it needs in ``ROUTE_ACCESS``; ``create_app`` refuses to start with a
route missing there, and ``ApiKeyAuth`` looks the request up by the route it matches (so an open path is
exactly a route declared open: ``/sign-in-admin`` is not ``/sign-in``). A request that matches no route
needs a search key, WebSocket handshakes included; only the ASGI lifespan passes unchecked.

The sign-in cookie holds a random session token, not the key: it expires after
COLQWEN_SERVER_SESSION_HOURS, signing out revokes it, and it dies with the server process.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from urllib.parse import parse_qs

from starlette.routing import BaseRoute, Match

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.service.csrf import FORM_FIELD, FormTokens
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
COOKIE = "colqwen_session"
MIN_KEY_CHARS = 16
SIGN_IN_LIMIT = 4096  # bytes of a sign-in form body (limits.BodySizeLimit refuses more, unread)


class Access(IntEnum):
    """What a route needs; a key of a higher scope may do everything a lower one may."""

    OPEN = 0
    SEARCH = 1
    ADMIN = 2


SCOPES = {"search": Access.SEARCH, "admin": Access.ADMIN}

# (method, route path) -> access. HEAD is checked as GET. A new route must be added here (create_app checks).
ROUTE_ACCESS: dict[tuple[str, str], Access] = {
    ("GET", "/health/live"): Access.OPEN,
    ("GET", "/health/ready"): Access.OPEN,
    ("GET", "/healthy-check"): Access.OPEN,
    ("GET", "/sign-in"): Access.OPEN,
    ("POST", "/sign-in"): Access.OPEN,
    ("POST", "/sign-out"): Access.OPEN,  # it only revokes the session it is sent with
    ("GET", "/openapi.json"): Access.SEARCH,
    ("GET", "/docs"): Access.SEARCH,
    ("GET", "/docs/oauth2-redirect"): Access.SEARCH,
    ("GET", "/redoc"): Access.SEARCH,
    ("GET", "/info"): Access.SEARCH,
    ("POST", "/embed_text"): Access.SEARCH,
    ("POST", "/embed_image"): Access.SEARCH,
    ("POST", "/search"): Access.SEARCH,
    ("GET", "/"): Access.SEARCH,
    ("GET", "/view/{doc_id}/{page}"): Access.SEARCH,
    ("GET", "/pages/{doc_id}/{page}"): Access.SEARCH,
    ("GET", "/pages/{doc_id}/{page}/heatmap"): Access.SEARCH,
    ("GET", "/documents"): Access.SEARCH,
    ("POST", "/documents"): Access.ADMIN,
    ("POST", "/upload"): Access.ADMIN,
    ("DELETE", "/documents/{doc_id}"): Access.ADMIN,
    ("POST", "/documents/{doc_id}/delete"): Access.ADMIN,
    ("GET", "/documents/{doc_id}/remove"): Access.ADMIN,
    ("POST", "/documents/{doc_id}/restore"): Access.ADMIN,
}
UNMATCHED = Access.SEARCH  # a 404 or 405 only for a key holder: no probing which paths exist


class AuthSetupError(PipelineError):
    """The keys cannot be read, are too short, or the server would be open on a network."""


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    access: Access


class ApiKeys:
    def __init__(self, keys: Sequence[ApiKey]):
        self._keys = list(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        entries = [k.strip() for k in settings.server_api_keys.split(",") if k.strip()]
        if settings.server_api_keys_file:
            entries += read_keys_file(Path(settings.server_api_keys_file))
        keys = [parse_key(entry) for entry in entries]
        unscoped = sum(":" not in entry for entry in entries)
        if unscoped:
            log.warning(
                "%d API key(s) without a scope count as admin keys; unscoped keys are deprecated: "
                "write admin:KEY or search:KEY in COLQWEN_SERVER_API_KEYS(_FILE)",
                unscoped,
            )
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def access_of(self, key: str) -> Access | None:
        """The key's scope, or None. Constant time, and every key compared: nothing times which matched."""
        offered = key.encode()
        matches = [hmac.compare_digest(offered, known.secret) for known in self._keys]
        return next((known.access for known, hit in zip(self._keys, matches, strict=True) if hit), None)


def parse_key(entry: str) -> ApiKey:
    scope, colon, secret = entry.partition(":")
    if not colon:
        scope, secret = "admin", entry
    if scope not in SCOPES:  # never echo the key itself
        raise AuthSetupError(f"an API key has the unknown scope {scope[:12]!r}: write search:KEY or admin:KEY")
    if len(secret) < MIN_KEY_CHARS:
        raise AuthSetupError(
            f"an API key of {len(secret)} characters is too short to be secret "
            f"(at least {MIN_KEY_CHARS}; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return ApiKey(secret.encode(), SCOPES[scope])


def read_keys_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise AuthSetupError(f"COLQWEN_SERVER_API_KEYS_FILE {path}: cannot read it ({error.strerror})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Sessions:
    """Sign-in sessions of this process: random tokens (only their hash is kept) with an expiry."""

    def __init__(self, lifetime_s: float):
        self.lifetime_s = lifetime_s
        self._sessions: dict[bytes, tuple[Access, float]] = {}
        self._lock = threading.Lock()

    def start(self, access: Access) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._sessions = {h: s for h, s in self._sessions.items() if s[1] > now}  # expired ones go
            self._sessions[_digest(token)] = (access, now + self.lifetime_s)
        return token

    def access_of(self, token: str) -> Access | None:
        with self._lock:
            session = self._sessions.get(_digest(token))
        return session[0] if session is not None and session[1] > time.time() else None

    def revoke(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(token), None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Guards:
    """Who may do what, as the routes need it: the keys, the sign-in sessions and the forms' tokens."""

    keys: ApiKeys
    sessions: Sessions
    forms: FormTokens


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def require_keys_off_loopback(host: str, keys: ApiKeys, insecure: bool) -> None:
    """Refuse to open the index and the model to a network without keys, unless told to."""
    if keys.enabled or insecure or is_loopback(host):
        return
    raise AuthSetupError(
        f"refusing to serve on {host} without API keys: anyone who reaches the port could search every "
        "document and upload files; set COLQWEN_SERVER_API_KEYS (or COLQWEN_SERVER_API_KEYS_FILE), "
        "or pass --insecure"
    )


def undeclared_routes(routes: Iterable[BaseRoute]) -> list[str]:
    """Routes of the app with no entry in ROUTE_ACCESS (create_app refuses to start with any)."""
    missing = []
    for route in routes:
        for method in sorted(getattr(route, "methods", None) or {"WEBSOCKET"}):
            if method != "HEAD" and (method, route.path) not in ROUTE_ACCESS:  # type: ignore[attr-defined]
                missing.append(f"{method} {route.path}")  # type: ignore[attr-defined]
    return missing


def required_access(routes: Iterable[BaseRoute], scope) -> Access:
    method = "GET" if scope.get("method") == "HEAD" else scope.get("method", "WEBSOCKET")
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return ROUTE_ACCESS.get((method, route.path), Access.ADMIN)  # type: ignore[attr-defined]
    return UNMATCHED


def bearer_key(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def session_cookie(headers: dict[bytes, bytes]) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def sign_in_form(body: bytes) -> tuple[str, str, str]:
    """The key, the form token and the page to go back to, from the sign-in form (urlencoded)."""
    fields = parse_qs(body.decode("utf-8", "replace"))
    return fields.get("key", [""])[0].strip(), fields.get(FORM_FIELD, [""])[0], fields.get("next", ["/"])[0]


def requested_path(scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return scope["path"] + (f"?{query}" if query else "")


Send = Callable[[dict], Awaitable[None]]
MISSING_KEY = "missing or wrong API key: send Authorization: Bearer KEY"
NEEDS_ADMIN = "this key may search only: uploading, removing and restoring documents need an admin key"


class ApiKeyAuth:
    """ASGI middleware: 401 for a request without a valid key (a sign-in page for a browser's GET), 403
    for a key whose scope is below the route's. ``routes``: the app's router, read at each request."""

    def __init__(self, app, keys: ApiKeys, sessions: Sessions, routes, sign_in_page: Callable[[str | None, str], str]):
        """``sign_in_page(session, next)``: the form, for the browser holding that session cookie (or
        none), that leads back to ``next``."""
        self.app, self.keys, self.sessions, self.router = app, keys, sessions, routes
        self.sign_in_page = sign_in_page

    async def __call__(self, scope, receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        needed = required_access(self.router.routes, scope)
        held = self.access(scope)
        if needed is Access.OPEN or (held is not None and held >= needed):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send, 401 if held is None else 403)
        elif held is not None:
            await respond(send, 403, json.dumps({"detail": NEEDS_ADMIN}).encode(), b"application/json")
        elif b"text/html" in dict(scope["headers"]).get(b"accept", b"") and scope["method"] == "GET":
            page = self.sign_in_page(session_cookie(dict(scope["headers"])), requested_path(scope))
            await respond(send, 401, page.encode(), b"text/html; charset=utf-8")
        else:
            body = json.dumps({"detail": MISSING_KEY}).encode()
            await respond(send, 401, body, b"application/json", [(b"www-authenticate", b"Bearer")])

    def access(self, scope) -> Access | None:
        """The scope of the request's key or session cookie (a key, when both are sent)."""
        headers = dict(scope["headers"])
        key = bearer_key(headers)
        if key is not None:
            return self.keys.access_of(key)
        token = session_cookie(headers)
        return self.sessions.access_of(token) if token is not None else None


async def respond(send: Send, status: int, body: bytes, content_type: bytes, extra=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refuse_websocket(scope, receive, send: Send, status: int) -> None:
    """Refuse the handshake with an HTTP status where the server supports it, else close it."""
    await receive()  # websocket.connect
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": MISSING_KEY if status == 401 else NEEDS_ADMIN}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
