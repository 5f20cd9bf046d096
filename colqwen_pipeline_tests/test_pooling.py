"""Optional token pooling (COLQWEN_TOKEN_POOLING) with colpali-engine's real HierarchicalTokenPooler:
off by default (same vectors, same fingerprint), on it stores fewer unit vectors and says so in the
fingerprint, so pooled pages never share a cache entry or a collection with unpooled ones."""

from __future__ import annotations

import numpy as np
import pypdfium2 as pdfium
import pytest

from colqwen_pipeline.embedding import registry
from colqwen_pipeline.embedding.identity import ModelSpec, identify
from colqwen_pipeline.index.bench import TOKENS, synthetic_pages
from colqwen_pipeline.index.pooling import HierarchicalPooling, NoPooling, token_pooler
from colqwen_pipeline_tests.conftest import SAMPLES


def test_off_by_default_and_for_factor_one():
    pages = [np.ones((5, 4), dtype=np.float16)]
    assert isinstance(token_pooler(0), NoPooling) and isinstance(token_pooler(1), NoPooling)
    assert token_pooler(0).pool(pages)[0] is pages[0]
    with pytest.raises(ValueError, match="at least 2"):
        HierarchicalPooling(1)


def test_factor_three_keeps_a_third_of_the_tokens_as_unit_vectors_near_the_originals():
    tokens, _ = synthetic_pages(2)
    pages = [tokens[:TOKENS].astype(np.float16), tokens[TOKENS:].astype(np.float16), tokens[:1].astype(np.float16)]

    pooled = token_pooler(3).pool(pages)

    assert [len(p) for p in pooled] == [TOKENS // 3, TOKENS // 3, 1]  # a lone token passes through
    assert all(p.dtype == np.float16 for p in pooled)
    assert np.allclose(np.linalg.norm(pooled[0].astype(np.float32), axis=1), 1.0, atol=1e-2)
    # every original token has a pooled vector close to it (it is the mean of its cluster)
    nearest = (pages[0].astype(np.float32) @ pooled[0].astype(np.float32).T).max(axis=1)
    assert np.median(nearest) > 0.8


def test_pooling_changes_the_fingerprint_and_only_when_on(tiny_model_dir):
    plain = identify(ModelSpec(str(tiny_model_dir), device="cpu"))
    pooled = identify(ModelSpec(str(tiny_model_dir), device="cpu", token_pooling=3))

    assert pooled.fingerprint == plain.fingerprint + "/pool3"
    assert "/pool" not in plain.fingerprint


def test_the_embedder_pools_page_vectors_but_not_queries(state, monkeypatch):
    monkeypatch.setenv("COLQWEN_TOKEN_POOLING", "3")
    from colqwen_pipeline.settings import Settings

    settings = Settings()
    pdf = pdfium.PdfDocument(SAMPLES / "pump_maintenance_manual.pdf")
    image = pdf[0].render(scale=40 / 72).to_pil()
    pdf.close()
    embedder = registry.get_embedder(settings)
    try:
        pooled = embedder.embed_images([image])[0]
        query = embedder.embed_queries(["pump maintenance"])[0]
        embedder.pooler = token_pooler(0)
        plain = embedder.embed_images([image])[0]
    finally:
        registry.unload()

    assert len(pooled) == len(plain) // 3 and pooled.dtype == np.float16
    assert len(query) == len(embedder.embed_queries(["pump maintenance"])[0])  # queries never pooled
