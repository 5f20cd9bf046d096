"""Bad bytes in the cache or the state directory are misses to re-derive, never results: a junk
Redis value, a truncated vectors.npy, a deleted one, an invalid pages.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import redis

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding import registry
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import add_sample

INVOICE = "scanned_invoice.jpg"


@pytest.fixture
def cached_state(state, redis_url, monkeypatch):
    url = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("COLQWEN_REDIS_URL", url)
    return state.model_copy(update={"redis_url": url})


def junk_like(value: bytes) -> bytes:
    """Random bytes of a valid fp16 length: decodes to (tokens, 128), with NaNs and wild norms."""
    return np.random.default_rng(0).integers(0, 256, len(value), dtype=np.uint8).tobytes()


def test_a_junk_cache_value_is_a_miss_deleted_and_never_copied_into_the_artifact(cached_state, instance):
    settings = cached_state
    add_sample(settings, INVOICE)
    ingest(settings, instance=instance, echo=lambda _: None)
    key = document_key(INVOICE)
    cache = registry.open_cache(settings, registry.model_identity(settings))
    image_key = cache.image_key(Manifest.read(settings.pages_dir / key).pages[0].sha256)
    client = redis.Redis.from_url(settings.redis_url)
    client.set(image_key, junk_like(client.get(image_key)))

    summary = ingest(settings, instance=instance, echo=lambda _: None, force=True)

    assert summary.failed == {}
    vectors = np.asarray(EmbeddingArtifact.read(settings.embeddings_dir / key).vectors, dtype=np.float32)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=0.01)
    restored = np.frombuffer(client.get(image_key), dtype=np.float16)
    assert np.isfinite(restored).all()  # re-embedded and written back valid


def test_a_junk_query_value_never_gives_a_nan_score(cached_state, instance):
    settings = cached_state
    add_sample(settings, INVOICE)
    ingest(settings, instance=instance, echo=lambda _: None)
    stages.search("invoice total", settings=settings)  # caches the query's vectors
    cache = registry.open_cache(settings, registry.model_identity(settings))
    client = redis.Redis.from_url(settings.redis_url)
    text_key = cache.text_key("invoice total")
    client.set(text_key, junk_like(client.get(text_key)))

    hits = stages.search("invoice total", settings=settings)

    assert hits and all(math.isfinite(h.score) for h in hits)
    json.dumps([h.as_dict() for h in hits], allow_nan=False)


@pytest.mark.parametrize("damage", ["truncate vectors.npy", "delete vectors.npy", "invalid pages.json"])
def test_a_damaged_artifact_is_rebuilt_by_the_next_ingest(state, instance, damage):
    add_sample(state, INVOICE)
    ingest(state, instance=instance, echo=lambda _: None)
    directory = state.embeddings_dir / document_key(INVOICE)
    if damage == "truncate vectors.npy":
        (directory / "vectors.npy").write_bytes((directory / "vectors.npy").read_bytes()[:5000])
    elif damage == "delete vectors.npy":
        (directory / "vectors.npy").unlink()
    else:
        (directory / "pages.json").write_text("{not json")

    summary = ingest(state, instance=instance, echo=lambda _: None)

    assert summary.failed == {} and summary.documents == 1
    assert EmbeddingArtifact.read_or_none(directory) is not None
    assert summary.checks["collection_consistency"] == "passed"
