"""A Milvus Lite file served to this process alone.

pymilvus opens a ``.db`` path by starting Milvus Lite's gRPC server on a random port of 127.0.0.1
with no authentication, so while a process held the file any local user could read or rewrite the
index through that port (issue 20). This module starts the same server (Milvus Lite's own
``MilvusServicer`` on its own ``MilvusLite`` engine) behind an interceptor that refuses every call
not carrying a random token that exists only in this process's memory, and hands pymilvus the
address and the token.
"""

from __future__ import annotations

import atexit
import base64
import secrets
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

WORKERS = 10
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # as Milvus Lite's own server and Milvus standalone


@dataclass(frozen=True)
class LiteEndpoint:
    uri: str
    token: str


class _RequireToken(grpc.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not the token (pymilvus sends base64 of it)."""

    def __init__(self, token: str):
        self._expected = base64.b64encode(token.encode()).decode()
        self._refuse = grpc.unary_unary_rpc_method_handler(self._unauthenticated)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        if secrets.compare_digest(str(metadata.get("authorization", "")), self._expected):
            return continuation(handler_call_details)
        return self._refuse

    @staticmethod
    def _unauthenticated(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this Milvus Lite server serves only its own process")


@dataclass
class _Running:
    server: grpc.Server
    engine: Any
    endpoint: LiteEndpoint


_running: dict[str, _Running] = {}
_lock = threading.Lock()


def start(lite_file: Path) -> LiteEndpoint:
    """Serve ``lite_file`` to this process (once; later calls get the same endpoint). Raises Milvus
    Lite's ``DataDirLockedError`` while another process holds the file."""
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2_grpc

    key = str(lite_file.resolve())
    with _lock:
        if key in _running:
            return _running[key].endpoint
        engine = MilvusLite(key)
        try:
            token = secrets.token_urlsafe(32)
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=WORKERS),
                interceptors=[_RequireToken(token)],
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(engine), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
        except BaseException:
            engine.close()
            raise
        endpoint = LiteEndpoint(f"http://127.0.0.1:{port}", token)
        _running[key] = _Running(server, engine, endpoint)
        return endpoint


def stop(lite_file: Path) -> None:
    """Stop serving ``lite_file`` and release its lock for other processes."""
    with _lock:
        running = _running.pop(str(lite_file.resolve()), None)
    if running is not None:
        running.server.stop(grace=2).wait()
        running.engine.close()


@atexit.register
def _stop_all() -> None:  # flush and unlock what a process still serves as it exits
    for key in list(_running):
        stop(Path(key))
