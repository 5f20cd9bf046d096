"""Several model servers behind one client: balancing, health and failover, in the client.

Why in the client, not behind a load balancer: the pipeline is the only caller of
``/embed_image``, it already reads every server's ``/info`` (model identity and limits), and an
embedding request is idempotent, so the client can retry it elsewhere. A balancer would be one
more service to deploy and watch, could not refuse a mix of models (it does not read ``/info``),
and would turn a killed server into a failed request unless it retries POSTs. A balancer still
works: give its one URL (docs/deployment.md).

- **Spread.** Each request goes to the server with the fewest requests in flight from this
  process; ties go to the one picked longest ago (round-robin when requests come one at a time).
- **Failover.** A server that fails a request (connection refused or reset, timeout, 5xx) is out
  of the pool for ``cooldown_s`` and the request goes to another. A busy server (503 with
  Retry-After) is skipped until then, and waited for only when every server is busy.
- **Coming back.** When its cooldown ends, a server is asked ``/health/ready`` and ``/info``
  before it gets requests again; one that now holds another model stays out for good.
- **One model.** Every server must serve the fingerprint of the first: search must never mix
  models, so a mix is refused at start, naming both URLs.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.embedding.identity import ModelIdentity

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0  # health and /info answer on the event loop, at once even while the model is busy
LOADING_RETRY_S = 5.0  # a server still loading its model is asked again this soon


class ModelServerError(PipelineError):
    """The model server is unreachable, not ready, or refused a request; one clear line."""


class ServerRefused(ModelServerError):
    """The request itself was refused (4xx): every server would refuse it, so it is not retried."""


def identity_from(served: dict[str, Any], url: str) -> ModelIdentity:
    """The server's model identity: ``device`` is the server's device, ``served_by`` where it runs,
    so that this process never reads its own (possibly absent) GPU for it."""
    names = {f.name for f in dataclasses.fields(ModelIdentity)} - {"served_by"}
    missing = names - served.keys()
    if missing:
        raise ModelServerError(f"model server {url}/info lacks {sorted(missing)}: server and client versions differ")
    return ModelIdentity(**{name: served[name] for name in names}, served_by=url)


@dataclasses.dataclass(eq=False)
class ModelServer:
    """One `serve` and what this process knows of its health."""

    url: str
    http: Any  # httpx.Client
    up: bool = False
    down_until: float = 0.0  # monotonic; while down, no requests before this
    busy_until: float = 0.0  # it answered 503 + Retry-After
    cause: str = ""  # why it is down, for the all-down error
    refused: str = ""  # it holds another model: never used
    in_flight: int = 0
    last_pick: int = -1
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class ServerPool:
    """The servers of COLQWEN_MODEL_SERVER_URL; ``call`` sends one request to a healthy one."""

    def __init__(self, urls: Sequence[str], timeout_s: float, wait_s: float, key: str, cooldown_s: float):
        import httpx

        if not urls:
            raise ModelServerError("no model server URL given (COLQWEN_MODEL_SERVER_URL)")
        headers = {"Authorization": f"Bearer {key}"} if key else {}  # a server with API keys refuses others
        self.servers = [
            ModelServer(url, httpx.Client(base_url=url, timeout=timeout_s, headers=headers)) for url in urls
        ]
        self.label = ",".join(urls)
        self.cooldown_s = cooldown_s
        self.busy_wait_s = wait_s  # how long busy servers' 503 + Retry-After are waited out
        self.identity: ModelIdentity | None = None
        self._first_url = ""
        self._lock = threading.Lock()
        self._picks = itertools.count()
        self._start(wait_s)

    @property
    def single(self) -> bool:
        return len(self.servers) == 1

    @property
    def limits(self) -> dict[str, int]:
        """Each limit as the strictest admitted server has it: any request then fits every server."""
        admitted = [s.info["limits"] for s in self.servers if s.info]
        return {name: min(limits[name] for limits in admitted) for name in admitted[0]}

    def usable(self) -> int:
        """Servers that may get requests (up, or down for a while): how many requests to keep in flight."""
        return sum(1 for s in self.servers if not s.refused)

    def close(self) -> None:
        for server in self.servers:
            server.http.close()

    # -- start: every reachable server admitted, at least one ---------------------------------------
    def _start(self, wait_s: float) -> None:
        """A server that is still loading is worth waiting for while no other is ready; an absent one is not."""
        deadline = time.monotonic() + wait_s
        loading = list(self.servers)
        while True:
            for server in list(loading):
                status = self._probe(server)
                if status != "LOADING":
                    loading.remove(server)
                if status == "READY":
                    self._admit(server, at_start=True)
            if any(s.up for s in self.servers) or not loading or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not any(s.up for s in self.servers):
            raise ModelServerError(self._none_usable())
        for server in self.servers:
            if not server.up:
                log.warning("model server %s left out for now: %s", server.url, server.cause)
                self._mark_down(server, server.cause, LOADING_RETRY_S if server in loading else self.cooldown_s)

    def _probe(self, server: ModelServer) -> str:
        """READY, LOADING, or why not (``server.cause`` says it)."""
        import httpx

        try:
            response = server.http.get("/health/ready", timeout=PROBE_TIMEOUT_S)
        except httpx.TransportError as error:
            server.cause = f"unreachable ({type(error).__name__})"
            return "UNREACHABLE"
        status = str(_json(response).get("status"))
        if response.status_code == 200:
            return "READY"
        server.cause = f"not ready ({status}): {_detail(response)}"
        return status if status == "LOADING" else "FAILED"

    def _admit(self, server: ModelServer, at_start: bool = False) -> None:
        """Into the pool, if it serves the pool's model. At start a mix is refused; later, such a
        server (restarted with other weights) stays out and the others carry on."""
        try:
            body = self._send(server, "GET", "/info", {})
        except ServerFailed as failure:  # it went away between the two probes
            self._mark_down(server, failure.cause, self.cooldown_s)
            return
        identity = identity_from(body["model"], server.url)
        with self._lock:
            if self.identity is None:
                self.identity, self._first_url = dataclasses.replace(identity, served_by=self.label), server.url
            mixed = identity.fingerprint != self.identity.fingerprint
        if mixed:
            message = (
                f"model servers {self._first_url} and {server.url} serve different models "
                f"({self.identity.fingerprint} vs {identity.fingerprint}): every server of COLQWEN_MODEL_SERVER_URL "
                "must load the same weights, precision and visual-token cap"
            )
            if at_start:
                raise ModelServerError(message)
            log.error("%s; %s is left out", message, server.url)
            server.refused = server.cause = message
            return
        with self._lock:
            server.info, server.up, server.down_until, server.cause = body, True, 0.0, ""

    # -- requests --------------------------------------------------------------------------------
    def call(self, method: str, path: str, **request: Any) -> dict[str, Any]:
        """The answer of one server; a failed server's request goes to the next, until none is left."""
        failed: dict[str, str] = {}  # url -> why it failed this request
        deadline = time.monotonic() + self.busy_wait_s
        while True:
            server = self._pick(failed) or self._pick(failed, ignore_cooldown=True)
            if server is None:
                if self._wait_for_busy(failed, deadline):
                    continue
                raise ModelServerError(self._all_failed(path, failed))
            try:
                return self._send(server, method, path, request)
            except ServerBusy as busy:
                if time.monotonic() + busy.retry_after > deadline:
                    failed[server.url] = busy.cause
                with self._lock:
                    server.busy_until = time.monotonic() + busy.retry_after
            except ServerFailed as failure:
                failed[server.url] = failure.cause
                self._mark_down(server, failure.cause, self.cooldown_s)
                if not self.single:
                    log.warning(
                        "model server %s failed %s (%s): no requests to it for %.0f s; the request goes to another",
                        server.url,
                        path,
                        failure.cause,
                        self.cooldown_s,
                    )
            finally:
                with self._lock:
                    server.in_flight -= 1

    def _pick(self, failed: dict[str, str], ignore_cooldown: bool = False) -> ModelServer | None:
        """The least busy server that has not failed this request, back from its cooldown if need be."""
        now = time.monotonic()
        with self._lock:
            candidates = [s for s in self.servers if s.url not in failed and not s.refused and s.busy_until <= now]
            returning = [s for s in candidates if not s.up and (ignore_cooldown or s.down_until <= now)]
        if ignore_cooldown and not returning:
            return None
        for server in returning:
            self._try_readmit(server)
        with self._lock:
            up = [s for s in candidates if s.up]
            if not up:
                return None
            server = min(up, key=lambda s: (s.in_flight, s.last_pick))
            server.in_flight += 1
            server.last_pick = next(self._picks)
            return server

    def _try_readmit(self, server: ModelServer) -> None:
        status = self._probe(server)
        if status != "READY":
            self._mark_down(server, server.cause, LOADING_RETRY_S if status == "LOADING" else self.cooldown_s)
            return
        try:
            self._admit(server)
        except ModelServerError as error:
            self._mark_down(server, str(error), self.cooldown_s)
            return
        if server.up and not self.single:
            log.info("model server %s is back in the pool", server.url)

    def _mark_down(self, server: ModelServer, cause: str, for_s: float) -> None:
        with self._lock:
            server.up, server.cause, server.down_until = False, cause, time.monotonic() + for_s

    def _wait_for_busy(self, failed: dict[str, str], deadline: float) -> bool:
        """Sleep until the first busy server may be asked again; False when none will be in time."""
        with self._lock:
            now = time.monotonic()
            busy = [s.busy_until for s in self.servers if s.url not in failed and not s.refused and s.busy_until > now]
        wake = min(busy, default=None)
        if wake is None or wake > deadline:
            return False
        time.sleep(max(0.0, wake - time.monotonic()))
        return True

    def _send(self, server: ModelServer, method: str, path: str, request: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = server.http.request(method, path, **request)
        except httpx.HTTPError as error:  # refused, reset, timed out
            raise ServerFailed(f"{type(error).__name__}: {error}") from error
        retry_after = _retry_after(response)
        if retry_after is not None:
            raise ServerBusy(f"HTTP 503: {_detail(response)}", retry_after)
        if response.status_code >= 500:
            raise ServerFailed(f"HTTP {response.status_code}: {_detail(response)}")
        if response.status_code == 401:
            raise ServerRefused(
                f"model server {server.url}{path}: HTTP 401: set COLQWEN_MODEL_SERVER_KEY to one of the server's "
                "COLQWEN_SERVER_API_KEYS"
            )
        if response.status_code != 200:
            raise ServerRefused(f"model server {server.url}{path}: HTTP {response.status_code}: {_detail(response)}")
        return response.json()

    # -- errors ----------------------------------------------------------------------------------
    def _none_usable(self) -> str:
        if self.single:
            server = self.servers[0]
            if server.cause.startswith("unreachable"):
                return (
                    f"model server {server.url} {server.cause}: start `colqwen-pipeline serve` there or unset "
                    "COLQWEN_MODEL_SERVER_URL to load the model in-process"
                )
            return f"model server {server.url} {server.cause}"
        causes = "; ".join(f"{s.url}: {s.cause}" for s in self.servers)
        return f"no model server of COLQWEN_MODEL_SERVER_URL is usable: {causes}"

    def _all_failed(self, path: str, failed: dict[str, str]) -> str:
        if self.single:
            return (
                f"model server {self.servers[0].url}{path}: {failed.get(self.servers[0].url) or self.servers[0].cause}"
            )
        causes = "; ".join(f"{s.url}: {failed.get(s.url) or s.cause or 'busy'}" for s in self.servers)
        return f"every model server failed {path}: {causes}"


class ServerFailed(Exception):
    """A server-side failure: the server goes out of the pool for a while."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class ServerBusy(ServerFailed):
    """503 + Retry-After: the server is well but full (its pixel budget) or still loading."""

    def __init__(self, cause: str, retry_after: float):
        super().__init__(cause)
        self.retry_after = retry_after


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _detail(response: Any) -> str:
    body = _json(response)
    return str(body.get("detail") or body.get("status") or response.text[:200])


def _retry_after(response: Any) -> float | None:
    """Seconds a 503 asks the client to wait, or None for any other answer."""
    value = response.headers.get("Retry-After", "")
    return float(value) if response.status_code == 503 and value.isdigit() else None
