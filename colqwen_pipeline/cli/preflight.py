"""What the CLI checks before it starts any work: settings that parse, a model directory that
exists, a Milvus that answers, an inbox that is there. Each failure is one line that names the
setting and its value, so a typo costs seconds instead of a run that renders every document
and then fails on the model.
"""

from __future__ import annotations

from pydantic import ValidationError

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.settings import Settings

ALLOWED = {
    "COLQWEN_DEVICE": "must be auto, cpu, cuda, cuda:N (a GPU's number) or mps",
    "COLQWEN_MODEL_SERVER_URL": "must be http(s)://host:port, or several such URLs comma-separated",
}


class SettingsError(PipelineError):
    """A ``COLQWEN_*`` value (environment or .env) that does not parse or is out of range."""


def settings_error_line(error: ValidationError) -> str:
    """``COLQWEN_BATCH_SIZE='abc': Input should be a valid integer, ...``; several on one line."""
    problems = []
    for detail in error.errors():
        name = "COLQWEN_" + "_".join(str(part) for part in detail["loc"]).upper()
        message = ALLOWED.get(name, detail["msg"])  # a pattern reads badly: say the allowed values
        problems.append(f"{name}={detail.get('input')!r}: {message}")
    return "bad setting " + "; ".join(problems)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(settings_error_line(error)) from None


def check_model(settings: Settings) -> None:
    """The configured model directory (and an adapter's base) exists, without reading any weights.
    Nothing to check for the tiny model (built on demand) or a model server (it loads its own)."""
    if not settings.model or settings.model_server_url:
        return
    from colqwen_pipeline.embedding.identity import ModelSpec, adapter_base, check_source

    local, is_adapter = check_source(ModelSpec(source=settings.model, base_model=settings.base_model))
    if local is not None and is_adapter:
        adapter_base(local, settings.base_model)


def check_index(settings: Settings) -> None:
    """The index's own check: an unreachable server or a bad token fails here, in one line."""
    from colqwen_pipeline.index import make_index
    from colqwen_pipeline.index.base import IndexRefused

    try:
        make_index(settings).check()
    except IndexRefused as error:
        if not settings.milvus_uri:
            raise
        raise IndexRefused(f"{error} (check COLQWEN_MILVUS_URI and COLQWEN_MILVUS_TOKEN)") from None


def preflight_ingest(settings: Settings) -> None:
    """Everything ``ingest`` needs, checked before the first document is rendered."""
    from colqwen_pipeline.inbox import require_inbox

    require_inbox(settings.inbox)
    check_model(settings)
    check_index(settings)
