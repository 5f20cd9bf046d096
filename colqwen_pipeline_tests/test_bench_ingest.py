"""`bench ingest`'s parts: the null embedder (an instant model behind the Embedder interface, for
benchmarks only) and the render stage it times alone, which must be the ingest's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from colqwen_pipeline.bulk import bench
from colqwen_pipeline.embedding.null import NullEmbedder, build_null_model
from colqwen_pipeline.embedding.registry import get_embedder, model_identity, unload
from colqwen_pipeline.embedding.validate import token_counts, valid_vectors


@pytest.fixture
def null_settings(state, tmp_path: Path, tiny_model_dir: Path):
    settings = state.model_copy(update={"model": str(build_null_model(tmp_path / "null-model", tiny_model_dir))})
    yield settings
    unload()


def test_the_null_embedder_gives_each_page_the_vectors_a_real_forward_would(null_settings, tiny_model_dir) -> None:
    """Pages of three sizes: each gets the processor's token count of unit vectors, under a fingerprint of
    its own; no weights are loaded."""
    from PIL import Image

    embedder = get_embedder(null_settings)
    pages = [Image.new("RGB", size, "white") for size in ((850, 1100), (1700, 2200), (300, 200))]

    vectors = embedder.embed_images(pages)

    assert isinstance(embedder, NullEmbedder)
    counts = token_counts(embedder.identity, 0)
    assert [len(v) for v in vectors] == [counts.expected(page.size) for page in pages]
    assert all(valid_vectors(v, embedder.dim) and v.dtype == np.float16 for v in vectors)
    assert all(counts.matches(v, page.size) for v, page in zip(vectors, pages, strict=True))
    tiny = model_identity(null_settings.model_copy(update={"model": str(tiny_model_dir)}))
    assert embedder.fingerprint != tiny.fingerprint  # never mixed with the tiny model's cache entries
    queries = embedder.embed_queries(["pump pressure", "a longer query about revenue by quarter"])
    assert [len(q) for q in queries] == [
        len(counts.processor.process_queries([q])["input_ids"][0])
        for q in ("pump pressure", "a longer query about revenue by quarter")
    ]


def test_render_alone_runs_the_ingests_render_stage(state, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """render_alone_s times run_documents(until="pages"), with the configured render workers."""
    from colqwen_pipeline.bulk import engine

    for i in range(3):
        bench.make_document(state.inbox / f"doc-{i}.pdf", 1, i)
    calls: list[str] = []
    real = engine.run_documents

    def recorded(settings, keys, **kwargs):
        calls.append(kwargs["until"])
        return real(settings, keys, **kwargs)

    monkeypatch.setattr(engine, "run_documents", recorded)
    env = {"COLQWEN_HOME": str(tmp_path / "alone"), "COLQWEN_INBOX": str(state.inbox)}

    seconds, pages = bench._render_alone(env)

    assert calls == ["pages"] and seconds > 0
    assert len(pages) == 3 and all(
        page.is_file() and page.parent.parent == tmp_path / "alone" / "pages" for page in pages
    )
