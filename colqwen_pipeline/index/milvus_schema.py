"""The schema of the two Milvus collections (schema 5: tokens in the token store), portable across
Lite, standalone and cluster, and what this code needs of a server."""

from __future__ import annotations

import logging
from typing import Any

from colqwen_pipeline.index.base import IndexRefused

log = logging.getLogger(__name__)

# Reads see every write before them: a check or a search right after an ingest must see it (a
# server's default, Bounded, lags writes by up to seconds; Lite is always strong).
CONSISTENCY = "Strong"
MIN_SERVER = (2, 3)  # partition keys, query iterators, collection properties (docs/search.md)
# VARCHAR limits, in UTF-8 bytes: a server counts bytes, Lite characters (issue 26: a 734-character
# CJK path, 2,174 bytes, failed its write on a server). The engine admits document paths of up to
# 1,024 characters, of up to 4 bytes each; the image path is the state folder's plus a key.
DOC_ID_BYTES, DOCUMENT_BYTES, IMAGE_BYTES = 512, 4 * 1024, 8 * 1024
PLACEHOLDER_DIM = 2
PLACEHOLDER = [1.0, 0.0]


def create_collections(
    client: Any,
    *,
    collection: str,
    pages: str,
    properties: dict[str, str],
    dim: int,
    partitions: int,
    index_type: str,
    lite: bool,
) -> None:
    """The pages collection (if absent), then the searched one; its properties are set last, so
    their presence marks the pair complete."""
    from pymilvus import DataType

    if not client.has_collection(pages):
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)  # the page uid
        schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_BYTES, is_partition_key=True)
        schema.add_field("document", DataType.VARCHAR, max_length=DOCUMENT_BYTES)
        schema.add_field("page", DataType.INT32)
        schema.add_field("page_sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("generation", DataType.VARCHAR, max_length=40)
        schema.add_field("image", DataType.VARCHAR, max_length=IMAGE_BYTES)
        schema.add_field("n_tokens", DataType.INT32)
        schema.add_field("record", DataType.INT64)  # the page's tokens in the token store
        # Every Milvus collection needs a vector field; nothing searches this one, so it is the
        # smallest a server accepts (the centroids collection is searched).
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=PLACEHOLDER_DIM)
        index = vector_index(client, "FLAT", lite)
        _create_loaded(client, pages, schema, index, num_partitions=partitions, consistency_level=CONSISTENCY)
        client.alter_collection_properties(pages, properties)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)  # page_uid << ROW_BITS | centroid
    schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_BYTES)
    schema.add_field("generation", DataType.VARCHAR, max_length=40)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = vector_index(client, index_type, lite)
    _create_loaded(client, collection, schema, index, consistency_level=CONSISTENCY)
    client.alter_collection_properties(collection, properties)  # last: marks the pair complete


def _create_loaded(client: Any, name: str, schema: Any, index: Any, **options: Any) -> None:
    """``create_collection(index_params=...)`` without its wait: pymilvus then polls each new index
    every 0.5 s, 2 s a first ingest, though an empty collection's index is built at once."""
    client.create_collection(name, schema=schema, **options)
    client.create_index(name, index, sync=False)
    client.load_collection(name)


def vector_index(client: Any, index_type: str, lite: bool) -> Any:
    index = client.prepare_index_params()
    params = {"M": 16, "efConstruction": 200} if index_type == "HNSW" else {}
    index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
    if lite or server_version(client) >= (2, 4):  # 2.3 has no INVERTED; its filters scan
        index.add_index(field_name="doc_id", index_type="INVERTED")
    return index


def open_collections(client: Any, names: list[str]) -> None:
    """Open this index's collections in a new Lite client before its threads share it: Lite opens
    a collection on first use without a lock, and two threads racing there got two instances of
    one collection (a load on one, the other still released: pymilvus then waited forever). Only
    these: a file may hold large collections of earlier models, and opening one costs seconds."""
    for name in names:
        if client.has_collection(name):
            client.get_collection_stats(name)


def server_version(client: Any) -> tuple[int, int]:
    """(major, minor) of the Milvus server behind ``client`` (``v2.3.5`` -> (2, 3); Lite's
    ``milvus_lite-3.2.2`` -> (0, 0)). Asked each time, once per open or create: a cache keyed by
    ``id(client)`` handed a new client the version of a collected one at the same address."""
    text = str(client.get_server_version()).lstrip("v")
    numbers = [int(part) for part in text.split("-")[0].split(".")[:2] if part.isdigit()]
    return (numbers + [0, 0])[0], (numbers + [0, 0])[1]


def require_supported_server(client: Any, uri: str) -> None:
    version = server_version(client)
    if version < MIN_SERVER:
        raise IndexRefused(
            f"Milvus server at {uri} is version {version[0]}.{version[1]}: colqwen-pipeline needs "
            f">= {MIN_SERVER[0]}.{MIN_SERVER[1]} (partition keys, query iterators, collection properties)"
        )
