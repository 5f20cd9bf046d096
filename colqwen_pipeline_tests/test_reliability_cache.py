"""A cached page value of valid unit vectors but the wrong token count (issue 26, item 4), with a
real Redis: it is not this page's embedding, so it is dropped, recomputed and written back right;
the index never holds it. Planted without a TTL, as in the report, so only the check can heal it."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.documents.manifest import Manifest
from colqwen_pipeline.embedding import registry
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.index import make_index
from colqwen_pipeline_tests.conftest import add_sample

INVOICE = "scanned_invoice.jpg"


@pytest.fixture
def cached_state(state, redis_url, monkeypatch):
    url = redis_url.rsplit("/", 1)[0] + "/6"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("COLQWEN_REDIS_URL", url)
    return state.model_copy(update={"redis_url": url})


def unit_vectors(count: int, dim: int = 128) -> bytes:
    vectors = np.random.default_rng(1).normal(size=(count, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16).tobytes()


@pytest.mark.parametrize("planted", [1, 405])
def test_a_cached_value_with_the_wrong_token_count_is_dropped_and_recomputed(cached_state, instance, planted):
    settings = cached_state
    add_sample(settings, INVOICE)
    ingest(settings, instance=instance, echo=lambda _: None)
    key = document_key(INVOICE)
    right = EmbeddingArtifact.read(settings.embeddings_dir / key).total_tokens
    assert right != planted
    cache = registry.open_cache(settings, registry.model_identity(settings))
    image_key = cache.image_key(Manifest.read(settings.pages_dir / key).pages[0].sha256)
    client = redis.Redis.from_url(settings.redis_url)
    client.set(image_key, unit_vectors(planted))  # no TTL

    summary = ingest(settings, instance=instance, echo=lambda _: None, force=True)

    assert summary.failed == {} and summary.tokens == right
    assert EmbeddingArtifact.read(settings.embeddings_dir / key).total_tokens == right
    assert make_index(settings).token_counts_by_document([key]) == {key: right}
    assert len(client.get(image_key)) == right * 128 * 2  # the right vectors are cached again
