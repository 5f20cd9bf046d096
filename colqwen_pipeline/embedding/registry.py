"""One loaded model per process, shared by every document and query that process embeds.

The model is loaded lazily: ``model_identity`` (the cache key) needs no weights, so a document
or query served entirely from the cache never pays for a load.

A query is scored by the model that embedded the live collection (``live_model_settings``): while
a rebuild for another model or family fills its own collection, search and evaluate keep using the
old model against the old, complete collection, and move over when the alias switches. Every model
identified here is remembered by fingerprint in ``models/known.json`` under the state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from colqwen_pipeline.embedding.cache import EmbeddingCache
from colqwen_pipeline.embedding.embedder import Embedder, LocalEmbedder, warm_up
from colqwen_pipeline.embedding.identity import ModelIdentity, ModelLoadError, ModelSpec, identify, legacy_fingerprint
from colqwen_pipeline.embedding.loading import load_model
from colqwen_pipeline.embedding.queries import encode_queries
from colqwen_pipeline.index.pooling import token_pooler
from colqwen_pipeline.settings import Settings

log = logging.getLogger(__name__)
RANDOM_WEIGHTS_WARNING = (
    "RANDOM-WEIGHT TEST MODEL in use: embeddings and search scores are meaningless; set COLQWEN_MODEL "
    "to real weights (README: Choosing a model) for real retrieval"
)

_lock = threading.Lock()
_identities: dict[ModelSpec, ModelIdentity] = {}
_loaded: dict[ModelSpec, Embedder] = {}  # at most one: a second model would double GPU memory
_remembered: set[tuple[Path, str]] = set()  # (state directory, fingerprint) written to its known.json
_load_count = 0


def model_spec(settings: Settings) -> ModelSpec:
    source = settings.model or str(ensure_tiny_model(settings.tiny_model_dir, settings.model_family))
    return ModelSpec(
        source=source,
        base_model=settings.base_model,
        device=settings.device,
        precision=settings.precision,
        max_visual_tokens=settings.max_visual_tokens,
        token_pooling=settings.token_pooling,
        family=settings.model_family,
    )


def ensure_tiny_model(directory: Path, family: str = "") -> Path:
    """The tiny random-weight model of ``family`` (default ColQwen2.5), built on first use."""
    from colqwen_pipeline.embedding.families import COLQWEN2_5, family_named
    from colqwen_pipeline.embedding.tiny import build_tiny_model, tiny_family

    wanted = family_named(family or COLQWEN2_5.name).name
    if tiny_family(directory) != wanted:
        log.info("building the tiny random-weight %s test model in %s", wanted, directory)
        build_tiny_model(directory, family=wanted)
    return directory


def model_identity(settings: Settings) -> ModelIdentity:
    """The fingerprint and facts of the configured model, without loading it (memoised)."""
    if settings.model_server_url:  # the model lives in `colqwen-pipeline serve`: its identity is the server's
        from colqwen_pipeline.embedding.remote import remote_embedder

        return remote_embedder(settings).identity
    spec = model_spec(settings)
    with _lock:
        if spec not in _identities:
            _identities[spec] = identify(spec)
        identity = _identities[spec]
    remember(settings.home_dir, spec, identity)
    return identity


KNOWN_MODELS = "known.json"  # under <home>/models: fingerprint -> the spec that produces it


@contextlib.contextmanager
def _known_models(home: Path) -> Iterator[dict[str, dict]]:
    """The remembered specs, under an exclusive lock; changes to the dict are written back atomically."""
    path = home / "models" / KNOWN_MODELS
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{KNOWN_MODELS}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:  # a torn or foreign file: start over, the models are re-remembered as used
            known = {}
        before = dict(known)
        yield known
        if known != before:
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps(known, indent=1))
            partial.replace(path)


def remember(home: Path, spec: ModelSpec, identity: ModelIdentity) -> None:
    """Record how to load the model of ``identity.fingerprint`` (its resolved precision: "auto" may
    resolve otherwise on another device), so search can score with it while it serves the live index."""
    if identity.served_by or (home, identity.fingerprint) in _remembered:
        return
    with _known_models(home) as known:
        known[identity.fingerprint] = dataclasses.asdict(spec) | {"precision": identity.precision}
    _remembered.add((home, identity.fingerprint))


def forget_identities() -> None:
    """Forget the memoised identities and what was remembered (tests; a state directory wiped under a process)."""
    with _lock:
        _identities.clear()
        _remembered.clear()


def live_model_settings(settings: Settings) -> Settings:
    """``settings`` with the model that embedded the live collection: the configured one, or, while a
    rebuild for the configured model has not switched over yet, the model of the collection search
    still serves. A collection written by a model this state directory never saw is refused."""
    if settings.model_server_url:  # the server holds one model; it answers for its own
        return settings
    from colqwen_pipeline.index import make_index

    configured = model_identity(settings)
    live = make_index(settings).live_fingerprint()
    if live is None or live in (configured.fingerprint, legacy_fingerprint(configured)):
        return settings
    with _known_models(settings.home_dir) as known:
        spec = known.get(live)
    if spec is None:
        raise ModelLoadError(
            f"the live collection {settings.collection} holds vectors of {live}, a model this state directory "
            f"has not used: set COLQWEN_MODEL to it, or complete the rebuild for {configured.fingerprint} "
            "(`colqwen-pipeline ingest`)"
        )
    update = {"model": spec["source"], "base_model": spec["base_model"], "model_family": spec["family"]}
    update |= {key: spec[key] for key in ("precision", "max_visual_tokens", "token_pooling")}
    scoring = settings.model_copy(update=update)
    if model_identity(scoring).fingerprint != live:
        raise ModelLoadError(
            f"the live collection holds vectors of {live}, but {spec['source']} is now another model: "
            f"complete the rebuild for {configured.fingerprint} (`colqwen-pipeline ingest`)"
        )
    log.info(
        "scoring with %s, the live collection's model, until the rebuild for %s switches", live, configured.fingerprint
    )
    return scoring


def get_embedder(settings: Settings, batch_size: int | None = None) -> Embedder:
    """Load once per process and spec (warm-up included); later documents, runs and queries reuse it."""
    global _load_count
    if settings.model_server_url:  # remote mode: same interface, nothing loaded in this process
        from colqwen_pipeline.embedding.remote import remote_embedder

        return remote_embedder(settings)
    spec = model_spec(settings)
    with _lock:
        if spec not in _loaded:
            unload_locked()
            embedder = _load(spec, settings, batch_size or settings.batch_size)
            _identities[spec] = embedder.identity
            remember(settings.home_dir, spec, embedder.identity)
            if embedder.identity.random_weights:
                log.warning(RANDOM_WEIGHTS_WARNING)
            _loaded[spec] = embedder
            _load_count += 1
            identity = embedder.identity
            log.info("model loaded: %s on %s (%s)", identity.fingerprint, identity.device, identity.precision)
        loaded = _loaded[spec]
    loaded.batch_size = batch_size or settings.batch_size
    if isinstance(loaded, LocalEmbedder):  # a null model has no batches to mix and keeps no pages to pool
        loaded.mix_sizes = settings.embed_mix_page_sizes
        loaded.pooler = token_pooler(settings.token_pooling)
    return loaded


def _load(spec: ModelSpec, settings: Settings, batch_size: int) -> Embedder:
    """The weights, warmed up; or, for a benchmark's null model, no weights at all (embedding/null.py)."""
    from colqwen_pipeline.embedding.null import NullEmbedder, is_null_model

    if is_null_model(spec.source):
        return NullEmbedder(identify(spec), batch_size)
    model, processor, identity = load_model(spec, settings.home_dir / "models" / "views")
    embedder = LocalEmbedder(model, processor, identity, batch_size)
    warm_up(embedder)
    return embedder


def unload() -> None:
    """Forget the loaded model (tests; a long-lived server switching models)."""
    with _lock:
        unload_locked()


def unload_locked() -> None:
    _loaded.clear()
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def loads_so_far() -> int:
    """How many times this process has loaded a model (tests pin 'one load for many documents')."""
    return _load_count


def open_cache(settings: Settings, identity: ModelIdentity) -> EmbeddingCache:
    return EmbeddingCache(
        settings.redis_url, identity.fingerprint, identity.dim, settings.cache_ttl_s, settings.redis_password
    )


def embed_queries_cached(settings: Settings, queries: Sequence[str]) -> tuple[list[np.ndarray], EmbeddingCache]:
    """Query multi-vectors for the live collection through ``encode_queries``, by the model that
    embedded it (``live_model_settings``); a model loads only on a cache miss."""
    settings = live_model_settings(settings)
    cache = open_cache(settings, model_identity(settings))
    vectors, _ = encode_queries(cache, lambda texts: get_embedder(settings).embed_queries(texts), queries)
    return vectors, cache
