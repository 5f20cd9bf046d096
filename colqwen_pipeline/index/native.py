"""Optional strategy for Milvus servers >= 2.6.4: one row per page whose token vectors live in an
array-of-structs field indexed with ``MAX_SIM_IP``, so the server itself ranks pages by MaxSim.

Milvus Lite has no struct-array fields: this strategy refuses a Lite URI with a clear error (the
portable centroid strategy in ``milvus.py`` runs everywhere). Writes keep the same generation
protocol: insert the new generation, then delete older ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from colqwen_pipeline.index.milvus import (
    DocumentRows,
    Hit,
    IndexRefused,
    MilvusIndex,
    PageRows,
    check_shapes,
    new_generation,
    page_fields,
)

MAX_TOKENS_PER_PAGE = 2048  # struct-array capacity: pages above it are refused, not truncated


class NativeMaxSimIndex(MilvusIndex):
    schema_version = "native-1"

    def _open(self) -> Any:
        if self.is_lite:
            raise IndexRefused(
                f"COLQWEN_INDEX_STRATEGY=native needs a Milvus server >= 2.6.4 (array-of-structs + MAX_SIM); "
                f"{self.uri} is a Milvus Lite file: use the default strategy 'centroids' or set COLQWEN_MILVUS_URI"
            )
        return super()._open()

    def build_schema(self, client: Any, dim: int) -> tuple[Any, Any]:
        """The page schema and its index parameters (pure pymilvus objects: buildable without a server)."""
        from pymilvus import DataType

        schema = client.create_schema(auto_id=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
        schema.add_field("document", DataType.VARCHAR, max_length=1024)
        schema.add_field("page", DataType.INT32)
        schema.add_field("page_sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("generation", DataType.VARCHAR, max_length=40)
        schema.add_field("image", DataType.VARCHAR, max_length=2048)
        schema.add_field("n_tokens", DataType.INT32)
        token = client.create_struct_field_schema()
        token.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field(
            "tokens",
            DataType.ARRAY,
            element_type=DataType.STRUCT,
            struct_schema=token,
            max_capacity=MAX_TOKENS_PER_PAGE,
        )
        index = client.prepare_index_params()
        index.add_index(
            field_name="tokens[vec]",
            index_type="HNSW",
            metric_type="MAX_SIM_IP",
            params={"M": 16, "efConstruction": 200},
        )
        index.add_index(field_name="doc_id", index_type="INVERTED")
        return schema, index

    def _ensure(self, client: Any, fingerprint: str, dim: int) -> None:
        if not client.has_collection(self.collection):
            schema, index = self.build_schema(client, dim)
            client.create_collection(self.collection, schema=schema, index_params=index)
            properties = {
                "colqwen.schema": self.schema_version,
                "colqwen.fingerprint": fingerprint,
                "colqwen.dim": str(dim),
            }
            client.alter_collection_properties(self.collection, properties)
            return
        info = self.collection_info(client) or {}
        if info.get("dim") != dim or info.get("fingerprint") != fingerprint:
            raise IndexRefused(
                f"collection {self.collection!r} holds embeddings of {info.get('fingerprint')} "
                f"(dim {info.get('dim')}); "
                f"refusing to add {fingerprint} (dim {dim}): set COLQWEN_COLLECTION to a new collection or reindex"
            )

    def replace_document(
        self, doc_id: str, document: str, pages: Sequence[PageRows], fingerprint: str, dim: int
    ) -> int:
        check_shapes(doc_id, pages, dim)
        for page in pages:
            if len(page.vectors) > MAX_TOKENS_PER_PAGE:
                raise IndexRefused(f"{doc_id} page {page.page}: {len(page.vectors)} tokens > {MAX_TOKENS_PER_PAGE}")
        generation = new_generation()
        rows = [native_row(doc_id, document, page, generation) for page in pages]
        with self.client() as client:
            self._ensure(client, fingerprint, dim)
            for start in range(0, len(rows), 64):
                client.insert(self.collection, rows[start : start + 64])
            client.delete(self.collection, filter=f'doc_id == {json.dumps(doc_id)} and generation != "{generation}"')
        return sum(len(p.vectors) for p in pages)

    def replace_documents(self, documents: Sequence[DocumentRows], fingerprint: str, dim: int) -> dict[str, int]:
        with self.session():
            return {d.doc_id: self.replace_document(d.doc_id, d.document, d.pages, fingerprint, dim) for d in documents}

    def token_counts_by_document(self, doc_ids: Sequence[str] | None = None) -> dict[str, int]:
        if doc_ids is not None and not doc_ids:
            return {}
        with self.client() as client:
            if not client.has_collection(self.collection):
                return {}
            client.load_collection(self.collection)
            expression = f"doc_id in {json.dumps(list(doc_ids))}" if doc_ids else "id >= 0"
            counts: dict[str, int] = {}
            for row in self._iterate(client, self.collection, expression, ["doc_id", "n_tokens"]):
                counts[row["doc_id"]] = counts.get(row["doc_id"], 0) + row["n_tokens"]
            return dict(sorted(counts.items()))

    def delete_document(self, doc_id: str) -> None:
        with self.client() as client:
            if client.has_collection(self.collection):
                client.delete(self.collection, filter=f"doc_id == {json.dumps(doc_id)}")

    def count_tokens(self, doc_id: str | None = None) -> int:
        with self.client() as client:
            if not client.has_collection(self.collection):
                return 0
            client.load_collection(self.collection)
            expression = f"doc_id == {json.dumps(doc_id)}" if doc_id else "id >= 0"
            return sum(r["n_tokens"] for r in self._iterate(client, self.collection, expression, ["n_tokens"]))

    def document_ids(self) -> set[str]:
        with self.client() as client:
            if not client.has_collection(self.collection):
                return set()
            client.load_collection(self.collection)
            return {r["doc_id"] for r in self._iterate(client, self.collection, "id >= 0", ["doc_id"])}

    def search(
        self,
        queries: Sequence[np.ndarray],
        top_k: int = 5,
        doc_ids: Sequence[str] | None = None,
        candidates: int | None = None,
    ) -> list[list[Hit]]:
        from pymilvus import EmbeddingList

        with self.client() as client:
            if not client.has_collection(self.collection):
                return [[] for _ in queries]
            client.load_collection(self.collection)
            results = client.search(
                self.collection,
                data=[EmbeddingList(np.asarray(q, dtype=np.float32)) for q in queries],
                anns_field="tokens[vec]",
                limit=top_k,
                filter=f"doc_id in {json.dumps(list(doc_ids))}" if doc_ids else "",
                output_fields=["doc_id", "document", "page", "image"],
                search_params={"metric_type": "MAX_SIM_IP"},
            )
        return [
            [
                Hit(
                    h["entity"]["doc_id"],
                    h["entity"]["document"],
                    int(h["entity"]["page"]),
                    float(h["distance"]),
                    h["entity"]["image"],
                )
                for h in hits
            ]
            for hits in results
        ]


def native_row(doc_id: str, document: str, page: PageRows, generation: str) -> dict:
    tokens = [{"vec": v} for v in np.asarray(page.vectors, dtype=np.float32)]
    return page_fields(doc_id, document, page, generation) | {"tokens": tokens}
