"""API keys of the server: who may search, read pages and upload.

Keys come from COLQWEN_SERVER_API_KEYS (comma-separated) and COLQWEN_SERVER_API_KEYS_FILE (one per line,
``#`` comments; for secrets mounts). With keys, every route but the health checks and the sign-in form
needs ``Authorization: Bearer KEY`` or the sign-in cookie. The cookie holds an HMAC of the key under a
secret made at start-up, not the key: a copied cookie dies with the server process, and no key sits in a
browser's cookie jar. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qs

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.service.csrf import FORM_FIELD
from colqwen_pipeline.settings import Settings

COOKIE = "colqwen_session"
MIN_KEY_CHARS = 16
OPEN_PATHS = ("/health/", "/healthy-check", "/sign-in")  # probes and the form that takes a key
SIGN_IN_LIMIT = 4096  # bytes of a sign-in form body


class AuthSetupError(PipelineError):
    """The keys cannot be read, are too short, or the server would be open on a network."""


class ApiKeys:
    def __init__(self, keys: Sequence[str]):
        self._keys = [key.encode() for key in keys]
        self._secret = secrets.token_bytes(32)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        keys = [k.strip() for k in settings.server_api_keys.split(",") if k.strip()]
        if settings.server_api_keys_file:
            keys += read_keys_file(Path(settings.server_api_keys_file))
        short = [k for k in keys if len(k) < MIN_KEY_CHARS]
        if short:  # never echo the key itself
            raise AuthSetupError(
                f"an API key of {len(short[0])} characters is too short to be secret "
                f"(at least {MIN_KEY_CHARS}; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, key: str) -> bool:
        """Constant time, and every key compared: no early exit that times which one matched."""
        offered = key.encode()
        return any([hmac.compare_digest(offered, known) for known in self._keys])

    def session_token(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def accepts_session(self, token: str) -> bool:
        offered = token.encode()
        tokens = [self.session_token(known.decode()).encode() for known in self._keys]
        return any([hmac.compare_digest(offered, known) for known in tokens])


def read_keys_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise AuthSetupError(f"COLQWEN_SERVER_API_KEYS_FILE {path}: cannot read it ({error.strerror})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


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


def sign_in_form(body: bytes) -> tuple[str, str]:
    """The key and the form token from the sign-in form (application/x-www-form-urlencoded)."""
    fields = parse_qs(body.decode("utf-8", "replace"))
    return fields.get("key", [""])[0].strip(), fields.get(FORM_FIELD, [""])[0]


Send = Callable[[dict], Awaitable[None]]


class ApiKeyAuth:
    """ASGI middleware: 401 for a request without a valid key (a sign-in page for a browser's GET)."""

    def __init__(self, app, keys: ApiKeys, sign_in_page: Callable[[str | None], str]):
        """``sign_in_page(session)``: the form, for the browser holding that session cookie (or none)."""
        self.app, self.keys, self.sign_in_page = app, keys, sign_in_page

    async def __call__(self, scope, receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or self._open(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        wants_html = b"text/html" in dict(scope["headers"]).get(b"accept", b"")
        if wants_html and scope["method"] == "GET":
            page = self.sign_in_page(session_cookie(dict(scope["headers"])))
            await respond(send, 401, page.encode(), b"text/html; charset=utf-8")
        else:
            body = json.dumps({"detail": "missing or wrong API key: send Authorization: Bearer KEY"}).encode()
            await respond(send, 401, body, b"application/json", [(b"www-authenticate", b"Bearer")])

    @staticmethod
    def _open(path: str) -> bool:
        return path.startswith(OPEN_PATHS)

    def _allowed(self, scope) -> bool:
        headers = dict(scope["headers"])
        key = bearer_key(headers)
        if key is not None:
            return self.keys.accepts(key)
        token = session_cookie(headers)
        return token is not None and self.keys.accepts_session(token)


async def respond(send: Send, status: int, body: bytes, content_type: bytes, extra=()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
