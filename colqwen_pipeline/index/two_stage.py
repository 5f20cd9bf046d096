"""Two-stage search over any page store: a cheap first stage proposes candidate pages, exact MaxSim
over their stored tokens ranks them.

First stage: every query token of every query is searched against the pages' summary vectors
(centroids) in one call; a page's approximate MaxSim is the sum over query tokens of its best hit.
The best ``wanted`` pages per query are fetched and scored exactly. When the candidates would be a
large share of the collection anyway, every page is scored exactly (same cost, no misses).

The store (``PageStore``) says how the summaries are searched and the tokens read back; this
module holds no storage detail, so another layout reuses the ranking unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from colqwen_pipeline.index.base import Hit
from colqwen_pipeline.index.maxsim import maxsim

# Replies and memory stay bounded however many queries or pages a call has: pages are read at most
# 256 at a time (~70 MB of base64 at 780 tokens on Milvus; a gRPC reply is capped at 256 MB).
FETCH_PAGES = 256
# Every page is scored exactly when the collection holds at most this many times the candidate
# count (issue 20: 81 pages of the random-weight test model gave the first stage a recall@5 of
# 0.46-0.48, so index_fidelity failed on the demo). With 20 candidates: up to 120 pages.
EXACT_SHARE = 6


@dataclass
class StoredPage:
    """One page as the exact stage reads it back."""

    uid: int
    doc_id: str
    document: str
    page: int
    sha256: str
    generation: str
    image: str
    vectors: np.ndarray


@dataclass(frozen=True)
class TokenHit:
    """One first-stage hit of one query token: a page and the similarity of its summary vector."""

    page_uid: int
    similarity: float


class PageStore(Protocol):
    def pages_estimate(self) -> int:
        """Pages stored, roughly (0: unknown; the first stage then decides)."""

    def first_stage(self, tokens: np.ndarray, doc_ids: Sequence[str] | None) -> list[list[TokenHit]]:
        """Per query token, its best summary hits (newest generations only need not hold here)."""

    def page_uids(self, doc_ids: Sequence[str] | None) -> list[int]:
        """Every searchable page (the newest generation of each)."""

    def fetch(self, uids: list[int]) -> dict[int, StoredPage]:
        """Pages by uid; of two generations of one page only the newest; an incomplete page raises."""


def search(
    store: PageStore,
    queries: Sequence[np.ndarray],
    top_k: int,
    doc_ids: Sequence[str] | None,
    wanted: int,
    exact_share: int = EXACT_SHARE,
) -> list[list[Hit]]:
    """Top-k pages per query by exact MaxSim over the best ``wanted`` first-stage candidates. All
    queries share one first-stage call; their candidates are fetched in groups whose pages fit
    one bounded fetch."""
    queries = [np.asarray(q, dtype=np.float32).reshape(len(q), -1) for q in queries]
    if not queries:
        return []
    if 0 < store.pages_estimate() <= wanted * exact_share:
        return exact_search(store, queries, top_k, doc_ids)
    hits = store.first_stage(np.concatenate(queries), doc_ids)
    ranked, offset = [], 0
    for query in queries:
        scores = approximate_scores(hits[offset : offset + len(query)])
        offset += len(query)
        ranked.append(sorted(scores, key=scores.get, reverse=True)[:wanted])
    results: list[list[Hit]] = []
    group = max(1, FETCH_PAGES // wanted)
    for start in range(0, len(queries), group):
        batch = list(zip(queries[start : start + group], ranked[start : start + group], strict=True))
        stored = store.fetch(sorted({uid for _, uids in batch for uid in uids}))
        results += [exact_top_k(q, [stored[u] for u in uids if u in stored], top_k) for q, uids in batch]
    return results


def exact_search(
    store: PageStore, queries: Sequence[np.ndarray], top_k: int, doc_ids: Sequence[str] | None
) -> list[list[Hit]]:
    """Brute force: exact MaxSim over every stored page, read ``FETCH_PAGES`` at a time."""
    queries = [np.asarray(q, dtype=np.float32).reshape(len(q), -1) for q in queries]
    uids = store.page_uids(doc_ids)
    best: list[list[Hit]] = [[] for _ in queries]
    for start in range(0, len(uids), FETCH_PAGES):
        pages = list(store.fetch(uids[start : start + FETCH_PAGES]).values())
        for i, query in enumerate(queries):
            best[i] = sorted(best[i] + exact_top_k(query, pages, top_k), key=lambda hit: -hit.score)[:top_k]
    return best


def exact_top_k(query: np.ndarray, pages: list[StoredPage], top_k: int) -> list[Hit]:
    if not pages:
        return []
    scores = maxsim(query, [p.vectors for p in pages])
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [Hit(pages[i].doc_id, pages[i].document, pages[i].page, float(scores[i]), pages[i].image) for i in best]


def approximate_scores(results: list[list[TokenHit]]) -> dict[int, float]:
    """Per page: sum over query tokens of its best summary similarity among the hits; a page
    missing from a token's hits gets that token's lowest returned similarity (an upper bound of
    its best summary similarity)."""
    best: dict[int, dict[int, float]] = {}
    floors = []
    for q, hits in enumerate(results):
        floors.append(min((h.similarity for h in hits), default=0.0))
        for hit in hits:
            scores = best.setdefault(hit.page_uid, {})
            if hit.similarity > scores.get(q, -2.0):
                scores[q] = hit.similarity
    return {uid: sum(s.get(q, floors[q]) for q in range(len(results))) for uid, s in best.items()}
