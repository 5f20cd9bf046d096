"""Embedded stores a user might pick instead of ours for ColPali-style multi-vectors, each set up the
way its own docs recommend, so ``bench search --peers`` can time them on the same pages and queries.

Peers are an optional extra (``pip install '.[bench]'``): nothing here is imported at run time.
Pages are numbered 0..n-1 in ingest order; ``search`` answers page numbers, best first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from colqwen_pipeline.common.errors import PipelineError

# Why a known peer cannot run here (reported in the JSON instead of numbers).
UNAVAILABLE = {
    "fast-plaid": (
        "no wheel installs beside torch 2.13: fast-plaid ships one build per torch version and its newest "
        "(1.7.0.2110) pins torch==2.11.0; a separate venv would need PyPI's torch 2.11 (a CUDA build with "
        "~3 GB of nvidia-* wheels) on a CPU-only box"
    ),
}


class PeerUnavailable(PipelineError):
    """A peer's package is not installed (it is in the ``bench`` extra): one line from the CLI."""


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Peer(ABC):
    """One multi-vector store under test: ingest every page, then answer queries with page numbers."""

    name: str

    def __init__(self, root: Path):
        self.root = root

    @abstractmethod
    def ingest(self, pages: Sequence[np.ndarray]) -> None: ...

    @abstractmethod
    def search(self, query: np.ndarray, top_k: int) -> list[int]: ...

    def disk_bytes(self) -> int:
        return _disk_bytes(self.root)

    @abstractmethod
    def close(self) -> None:
        """Release files (the bench deletes its directory afterwards)."""


class LanceDBPeer(Peer):
    """LanceDB's multivector column (list of fixed-size float lists), cosine metric, MaxSim scoring
    (docs.lancedb.com/search/multivector-search). Cosine equals our inner product on unit vectors.
    Its IVF_PQ index needs enough rows to train, so small sets are searched flat."""

    name = "lancedb"
    INDEX_MIN_PAGES = 256  # below this, PQ training has too few rows: flat search, as the docs allow

    def __init__(self, root: Path):
        super().__init__(root)
        try:
            import lancedb
        except ImportError as error:
            raise PeerUnavailable(f"peer 'lancedb' needs pip install '.[bench]' ({error})") from None
        self.db: Any = lancedb.connect(str(root))
        self.table: Any = None  # created by ingest
        self.indexed = False

    def ingest(self, pages: Sequence[np.ndarray]) -> None:
        import pyarrow as pa

        dim = pages[0].shape[1]
        schema = pa.schema([pa.field("page", pa.int64()), pa.field("vector", pa.list_(pa.list_(pa.float32(), dim)))])
        self.table = self.db.create_table("pages", schema=schema)
        for start in range(0, len(pages), 256):
            batch = pages[start : start + 256]
            flat = pa.FixedSizeListArray.from_arrays(np.concatenate(batch).astype(np.float32).ravel(), dim)
            offsets = pa.array(np.concatenate([[0], np.cumsum([len(p) for p in batch])]), pa.int32())
            vectors = pa.ListArray.from_arrays(offsets, flat)
            pages_column = pa.array(range(start, start + len(batch)), pa.int64())
            self.table.add(pa.Table.from_arrays([pages_column, vectors], schema=schema))
        if len(pages) >= self.INDEX_MIN_PAGES:
            self.table.create_index(metric="cosine", vector_column_name="vector")
            self.indexed = True

    def search(self, query: np.ndarray, top_k: int) -> list[int]:
        rows = (
            self.table.search(np.asarray(query, dtype=np.float32)).limit(top_k).select(["page", "_distance"]).to_list()
        )
        return [int(row["page"]) for row in rows]

    def close(self) -> None:
        self.table = self.db = None


class QdrantLocalPeer(Peer):
    """qdrant-client's local mode (what a user gets without a server), with Qdrant's ColPali/ColQwen
    recipe (qdrant.tech/documentation/tutorials-search-engineering/pdf-retrieval-at-scale/): the
    original multivectors with MAX_SIM and HNSW off (m=0), plus row- and column-mean-pooled
    multivectors of the patch grid; a query prefetches 100 pages by each pooled vector and reranks
    them by MaxSim on the originals. Synthetic pages have no grid: their 780 tokens are laid out as
    26 x 30 in order, so the pooled vectors mix unrelated tokens (a handicap real pages lack)."""

    name = "qdrant-local"
    GRID_ROWS = 26
    PREFETCH = 100

    def __init__(self, root: Path):
        super().__init__(root)
        try:
            from qdrant_client import QdrantClient, models
        except ImportError as error:
            raise PeerUnavailable(f"peer 'qdrant-local' needs pip install '.[bench]' ({error})") from None
        self.models = models
        self.client = QdrantClient(path=str(root))

    def _pooled(self, page: np.ndarray) -> dict[str, list[list[float]]]:
        rows = self.GRID_ROWS if len(page) % self.GRID_ROWS == 0 else 1
        grid = np.asarray(page, dtype=np.float32).reshape(rows, -1, page.shape[1])
        return {
            "original": page.tolist(),
            "mean_pooling_rows": grid.mean(axis=1).tolist(),
            "mean_pooling_columns": grid.mean(axis=0).tolist(),
        }

    def ingest(self, pages: Sequence[np.ndarray]) -> None:
        m = self.models
        multi = m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM)
        dim = pages[0].shape[1]
        self.client.create_collection(
            "pages",
            vectors_config={
                "original": m.VectorParams(
                    size=dim, distance=m.Distance.COSINE, multivector_config=multi, hnsw_config=m.HnswConfigDiff(m=0)
                ),
                "mean_pooling_rows": m.VectorParams(size=dim, distance=m.Distance.COSINE, multivector_config=multi),
                "mean_pooling_columns": m.VectorParams(size=dim, distance=m.Distance.COSINE, multivector_config=multi),
            },
        )
        for start in range(0, len(pages), 32):
            points = [
                m.PointStruct(id=start + i, vector=self._pooled(p)) for i, p in enumerate(pages[start : start + 32])
            ]
            self.client.upsert("pages", points=points)

    def search(self, query: np.ndarray, top_k: int) -> list[int]:
        m, q = self.models, np.asarray(query, dtype=np.float32).tolist()
        response = self.client.query_points(
            "pages",
            query=q,
            using="original",
            prefetch=[
                m.Prefetch(query=q, limit=self.PREFETCH, using="mean_pooling_columns"),
                m.Prefetch(query=q, limit=self.PREFETCH, using="mean_pooling_rows"),
            ],
            limit=top_k,
            with_payload=False,
        )
        return [int(point.id) for point in response.points]

    def close(self) -> None:
        self.client.close()


PEERS: dict[str, type[Peer]] = {LanceDBPeer.name: LanceDBPeer, QdrantLocalPeer.name: QdrantLocalPeer}


def parse_peers(text: str | None) -> list[str]:
    """``lancedb,qdrant-local`` -> names, refusing unknown ones with one line."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS and name not in UNAVAILABLE]
    if unknown:
        known = ", ".join(sorted([*PEERS, *UNAVAILABLE]))
        raise ValueError(f"unknown peer {unknown[0]!r}: choose from {known}")
    return names
