"""uvicorn as `serve` runs it: h11 with a deadline for receiving each request.

uvicorn times out idle keep-alive connections only: a client that sends its headers or body a byte at a
time (slowloris) holds a connection, and the handler thread waiting on the body, for ever. Here every
request must arrive whole (headers and body) within ``request_timeout_s`` of the connection opening or
of the previous response; after that the server answers 408 if it has not started a response, and closes.
Time spent *handling* a request (a long model forward) is not limited.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11: request not (completely) received


def timed_protocol(request_timeout_s: float) -> type[asyncio.Protocol]:
    """An H11Protocol class whose connections must deliver each request within ``request_timeout_s``."""

    class RequestDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on a kept-alive connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(request_timeout_s, self._expire)

        def _expire(self) -> None:
            if self.transport.is_closing() or self.conn.their_state not in RECEIVING:
                return
            if self.conn.our_state is h11.IDLE:  # no response begun: say why before closing
                self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return RequestDeadlineProtocol


def uvicorn_config(app: Any, host: str, port: int, request_timeout_s: float) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        http=timed_protocol(request_timeout_s),
        timeout_keep_alive=5,  # idle kept-alive connections (uvicorn's default, said on purpose)
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        timeout_graceful_shutdown=10,
    )
