"""The collection-wide checks and ``colqwen-pipeline evaluate`` against the live index: gather
the state (inbox, embeddings artifacts, Milvus rows, eval queries), then judge it with
``evaluation.checks``.

The stored embeddings are the artifacts of the documents in the inbox: a document that was
embedded but is missing from the collection lowers quality and fidelity, as it should; one
that never got that far (not ingested yet, or refused by the rasteriser) is left out.
"""

from __future__ import annotations

from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.evaluation.checks import (
    CheckOutcome,
    check_consistency,
    check_index_fidelity,
    check_retrieval_quality,
)
from colqwen_pipeline.evaluation.evalset import EvalSetError, load_eval_set
from colqwen_pipeline.evaluation.retrieval import (
    EmbedQueries,
    RetrievalReport,
    evaluate_retrieval,
    index_fidelity,
    load_artifacts,
)
from colqwen_pipeline.inbox import inbox_files
from colqwen_pipeline.index import make_index
from colqwen_pipeline.index.base import DocumentIndex
from colqwen_pipeline.settings import Settings


def checked_index(settings: Settings) -> DocumentIndex:
    """The live index with Strong search: a check judges what the run has just written."""
    return make_index(settings.model_copy(update={"index_search_consistency": "Strong"}))


def _lazy_embedder(settings: Settings) -> EmbedQueries:
    """The queries as search embeds them (cache, then the model, loaded only on a miss)."""

    def embed(texts: list[str]):
        from colqwen_pipeline.embedding.registry import embed_queries_cached

        return embed_queries_cached(settings, texts)[0]

    return embed


def stored_artifacts(settings: Settings) -> dict[str, EmbeddingArtifact]:
    return load_artifacts(settings.embeddings_dir, inbox_files(settings.inbox))


def evaluate(
    settings: Settings, index: DocumentIndex | None = None, embed: EmbedQueries | None = None
) -> RetrievalReport:
    """The eval set scored on the live collection (raises EvalSetError for a bad eval set)."""
    queries = load_eval_set(settings.eval_set, settings.eval_split)
    index = index or checked_index(settings)
    return evaluate_retrieval(queries, index, embed or _lazy_embedder(settings), stored_artifacts(settings))


def retrieval_quality(
    settings: Settings, index: DocumentIndex | None = None, embed: EmbedQueries | None = None
) -> CheckOutcome:
    try:
        report = evaluate(settings, index, embed)
    except EvalSetError as error:
        return CheckOutcome(False, str(error))
    return check_retrieval_quality(report, settings.quality_min_ndcg_at_5, settings.quality_min_recall_at_5)


def fidelity(settings: Settings, index: DocumentIndex | None = None, embed: EmbedQueries | None = None) -> CheckOutcome:
    try:
        queries = load_eval_set(settings.eval_set, settings.eval_split)
    except EvalSetError as error:
        return CheckOutcome(True, f"skipped: {error}", {"skipped": True})
    index = index or checked_index(settings)
    embed = embed or _lazy_embedder(settings)
    report = index_fidelity(queries, index, embed, stored_artifacts(settings), settings.fidelity_k)
    return check_index_fidelity(report, settings.fidelity_min_recall)


def consistency(settings: Settings, index: DocumentIndex | None = None) -> CheckOutcome:
    index = index or checked_index(settings)
    inbox = set(inbox_files(settings.inbox))
    artifact_tokens = {d: a.total_tokens for d, a in load_artifacts(settings.embeddings_dir, inbox).items()}
    with index.session():  # one connection for every count
        indexed = tokens_by_document(index, set(artifact_tokens))
        unreachable = index.check(thorough=True)
    outcome = check_consistency(artifact_tokens, indexed, inbox)
    if not unreachable:
        return outcome
    summary = ", ".join(f"{doc_id}: {n}" for doc_id, n in sorted(unreachable.items())[:5])
    return CheckOutcome(
        False,
        f"{sum(unreachable.values())} unreachable index rows (a crashed or raced write; re-ingest "
        f"the document to remove them): {summary}. {outcome.description}",
        outcome.metadata | {"unreachable_rows": sum(unreachable.values())},
        outcome.tables,
    )


def tokens_by_document(index: DocumentIndex, expected: set[str]) -> dict[str, int]:
    """Token vectors in Milvus per document id: every document the index knows plus ``expected``."""
    counts = index.token_counts_by_document()
    return {doc_id: counts.get(doc_id, 0) for doc_id in counts.keys() | expected}
