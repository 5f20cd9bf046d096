"""Search latency through pymilvus's own Milvus Lite server against this project's token-guarded one
(index/lite_server.py), on the same Lite file, in alternating rounds. Issue 20 item 10.

    .venv/bin/python scripts/bench_lite_guard.py [--vectors 2000] [--searches 100] [--rounds 3]

Prints one JSON line: the median milliseconds of one 8-vector FLAT search, per round and side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from colqwen_pipeline.index import lite_server  # noqa: E402

DIM = 128


def make_file(db: Path, vectors: int, rng: np.random.Generator) -> None:
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=str(db))
    schema = client.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_collection("t", schema=schema, index_params=index)
    client.insert("t", [{"id": i, "v": rng.standard_normal(DIM).tolist()} for i in range(vectors)])
    client.close()
    server_manager_instance.release_server(str(db))


def median_search_ms(client, queries: list[list[float]], searches: int) -> float:
    client.load_collection("t")
    times = []
    for _ in range(searches):
        start = time.perf_counter()
        client.search("t", data=queries, limit=5, anns_field="v")
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def main() -> int:
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    db = Path(tempfile.mkdtemp(prefix="colqwen-lite-guard-")) / "bench.db"
    make_file(db, args.vectors, rng)
    queries = [rng.standard_normal(DIM).tolist() for _ in range(8)]
    result: dict[str, list[float]] = {"pymilvus_server_ms": [], "token_guarded_ms": []}
    for _ in range(args.rounds):
        client = MilvusClient(uri=str(db))
        result["pymilvus_server_ms"].append(median_search_ms(client, queries, args.searches))
        client.close()
        server_manager_instance.release_server(str(db))
        endpoint = lite_server.start(db)
        client = MilvusClient(uri=endpoint.uri, token=endpoint.token)
        result["token_guarded_ms"].append(median_search_ms(client, queries, args.searches))
        client.close()
        lite_server.stop(db)
    print(json.dumps({"vectors": args.vectors, "searches_per_round": args.searches, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
