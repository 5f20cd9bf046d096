"""``search`` without a model load of its own: a ``colqwen-pipeline serve`` embeds the query when one is
configured (COLQWEN_MODEL_SERVER_URL) or answers READY on this machine's COLQWEN_SERVER_PORT and holds
the model of the searched collection. A search that loads the model pays for it every time (the whole
`search` command: 21.9 s against 6.0 s through a running serve, tiny model, the loaded 2-core test machine)."""

from __future__ import annotations

from collections.abc import Callable

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.index.base import DocumentIndex
from colqwen_pipeline.settings import Settings

PROBE_S = 0.5  # a loopback port that answers at all answers well within this


def local_server(settings: Settings) -> str | None:
    """The URL of a READY model server on 127.0.0.1 at COLQWEN_SERVER_PORT, else None."""
    import httpx

    url = f"http://127.0.0.1:{settings.server_port}"
    try:
        response = httpx.get(f"{url}/health/ready", timeout=PROBE_S)
        ready = response.status_code == 200 and response.json().get("status") == "READY"
    except (httpx.HTTPError, ValueError, AttributeError):  # nothing there, or something that is not `serve`
        return None
    return url if ready else None


def with_model_server(settings: Settings, index: DocumentIndex, say: Callable[[str], None]) -> Settings:
    """``settings`` that embed the query through a model server where one can; says which it is."""
    if settings.model_server_url:
        say(f"query embedded by the model server at {settings.model_server_url} (COLQWEN_MODEL_SERVER_URL)")
        return settings
    url = local_server(settings)
    if url is None:
        return settings
    from colqwen_pipeline.embedding.identity import legacy_fingerprint
    from colqwen_pipeline.embedding.registry import model_identity

    remote = settings.model_copy(update={"model_server_url": url})
    try:
        served = model_identity(remote)  # its /info, with COLQWEN_MODEL_SERVER_KEY where it has keys
    except PipelineError as error:
        say(f"not using the model server at {url} ({error}); loading the model here")
        return settings
    if index.live_fingerprint() not in (served.fingerprint, legacy_fingerprint(served)):
        say(f"the model server at {url} holds {served.fingerprint}, not the searched collection's model: loading here")
        return settings
    say(f"query embedded by the model server running at {url} (no model load here)")
    return remote
