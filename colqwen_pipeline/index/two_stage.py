"""Two-stage search over any page store: a cheap first stage proposes candidate pages, exact MaxSim
over their stored tokens ranks them.

First stage: every query token of every query is searched against the pages' summary vectors
(centroids) in one call; a page's approximate MaxSim is the sum over query tokens of its best hit.
The best ``wanted`` pages per query are fetched and scored exactly. When the candidates would be a
large share of the collection anyway, every page is scored exactly (same cost, no misses).

The first stage (``FirstStage``: Milvus HNSW centroids, or a scan of the token store's centroids)
ranks pages; the page source (``PageSource``) reads their tokens back; this module holds no
storage detail, so another layout reuses the ranking unchanged.
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


class FirstStage(Protocol):
    def pages_estimate(self) -> int:
        """Pages stored, roughly (0: unknown; the first stage then decides)."""

    def ranked(self, queries: Sequence[np.ndarray], doc_ids: Sequence[str] | None, depth: int) -> list[list[int]]:
        """Per query, page uids best first, up to ``depth`` (dead or superseded pages may be among
        them: the exact stage skips what ``fetch`` does not return and reads further down)."""


class PageSource(Protocol):
    def page_uids(self, doc_ids: Sequence[str] | None) -> list[int]:
        """Every searchable page (the newest generation of each)."""

    def fetch(self, uids: list[int]) -> dict[int, StoredPage]:
        """Pages by uid, those that exist; of two generations of one page only the newest; a
        damaged page raises."""


# The first stage ranks this many times the wanted candidates: a dead or superseded page among them
# (a crashed write's tokens, the older generation while a re-ingest settles) is replaced by the next.
RANK_DEPTH = 4


def search(
    first: FirstStage,
    pages: PageSource,
    queries: Sequence[np.ndarray],
    top_k: int,
    doc_ids: Sequence[str] | None,
    wanted: int,
    exact_share: int = EXACT_SHARE,
) -> list[list[Hit]]:
    """Top-k pages per query by exact MaxSim over the best ``wanted`` live first-stage candidates.
    All queries share one first-stage call; their candidates are fetched in groups whose pages fit
    one bounded fetch."""
    queries = [np.asarray(q, dtype=np.float32).reshape(len(q), -1) for q in queries]
    if not queries:
        return []
    if 0 < first.pages_estimate() <= wanted * exact_share:
        return exact_search(pages, queries, top_k, doc_ids)
    rankings = first.ranked(queries, doc_ids, wanted * RANK_DEPTH)
    results: list[list[Hit]] = []
    group = max(1, FETCH_PAGES // wanted)
    for start in range(0, len(queries), group):
        chosen = live_candidates(pages, rankings[start : start + group], wanted, doc_ids)
        results += [
            exact_top_k(q, found, top_k) for q, found in zip(queries[start : start + group], chosen, strict=True)
        ]
    return results


def live_candidates(
    pages: PageSource, rankings: list[list[int]], wanted: int, doc_ids: Sequence[str] | None
) -> list[list[StoredPage]]:
    """Per ranking, its first ``wanted`` pages that exist (and belong to ``doc_ids``), fetched in
    rounds: the first asks for ``wanted`` per ranking; a page that is not there is replaced by the
    next of its ranking in the following round."""
    allowed = set(doc_ids) if doc_ids is not None else None
    stored: dict[int, StoredPage] = {}
    asked: set[int] = set()
    chosen: list[list[int]] = [[] for _ in rankings]
    cursor = [0] * len(rankings)
    while True:
        round_uids: list[set[int]] = [set() for _ in rankings]
        for i, ranking in enumerate(rankings):
            while len(chosen[i]) + len(round_uids[i]) < wanted and cursor[i] < len(ranking):
                uid = ranking[cursor[i]]
                cursor[i] += 1
                if uid in stored:
                    chosen[i].append(uid)
                elif uid not in asked:
                    round_uids[i].add(uid)
        new = sorted(set().union(*round_uids) - asked)
        if not new:
            break
        asked.update(new)
        found = pages.fetch(new)
        stored.update({uid: p for uid, p in found.items() if allowed is None or p.doc_id in allowed})
        for i, uids in enumerate(round_uids):
            chosen[i] += [uid for uid in rankings[i] if uid in uids and uid in stored]
    return [newest_per_page([stored[uid] for uid in uids]) for uids in chosen]


def newest_per_page(pages: list[StoredPage]) -> list[StoredPage]:
    """Two generations of one page fetched in different rounds: only the newest is scored."""
    best: dict[tuple[str, int], StoredPage] = {}
    for page in pages:
        key = (page.doc_id, page.page)
        if key not in best or page.generation > best[key].generation:
            best[key] = page
    return list(best.values())


def exact_search(
    store: PageSource, queries: Sequence[np.ndarray], top_k: int, doc_ids: Sequence[str] | None
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
