"""One loaded model per process, shared by every document that process embeds."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from colqwen_pipeline.embedding.embedder import Embedder, warm_up
from colqwen_pipeline.embedding.loading import ModelSpec, load_model
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
RANDOM_WEIGHTS_WARNING = (
    "RANDOM-WEIGHT TEST MODEL in use (no COLQWEN_MODEL configured): embeddings and search scores are "
    "meaningless; set COLQWEN_MODEL to real ColQwen2.5 weights for real retrieval"
)

_lock = threading.Lock()
_loaded: dict[tuple, Embedder] = {}


def model_spec(settings: Settings) -> ModelSpec:
    source = settings.model or str(ensure_tiny_model(settings.tiny_model_dir))
    return ModelSpec(
        source=source,
        base_model=settings.base_model,
        device=settings.device,
        precision=settings.precision,
        max_visual_tokens=settings.max_visual_tokens,
    )


def ensure_tiny_model(directory: Path) -> Path:
    from colqwen_pipeline.embedding.tiny import build_tiny_model, is_tiny_model

    if not is_tiny_model(directory):
        log.info("building the tiny random-weight test model in %s", directory)
        build_tiny_model(directory)
    return directory


def get_embedder(settings: Settings, batch_size: int | None = None) -> Embedder:
    """Load once per process and spec; later calls (other documents, other runs) reuse it."""
    spec = model_spec(settings)
    key = (spec, str(settings.home_dir))
    with _lock:
        if key not in _loaded:
            model, processor, info = load_model(spec, settings.home_dir / "models" / "views")
            if info["random_weights"]:
                log.warning(RANDOM_WEIGHTS_WARNING)
            embedder = Embedder(model, processor, info, batch_size or settings.batch_size)
            warm_up(embedder)
            _loaded[key] = embedder
            log.info("model loaded: %s on %s (%s)", info["fingerprint"], info["device"], info["precision"])
        embedder = _loaded[key]
    embedder.batch_size = batch_size or settings.batch_size
    return embedder


def loads_so_far() -> int:
    """How many models this process has loaded (tests pin 'one load for many documents')."""
    return len(_loaded)
