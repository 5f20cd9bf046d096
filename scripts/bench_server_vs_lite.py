"""Search p50 on a real Milvus 2.3.5 server against Milvus Lite, same run, same box (issue 28 item 4).

Starts a server on free ports (the tests' ``milvus_server``), builds the same synthetic pages once on
each backend (``bench_search`` with a work folder, so later rounds only search), then alternates
rounds (server, Lite, server, Lite, ...) to spread the box's noise over both; each round is a fresh
searcher process. ``--rpcs`` then times every client call of a few searches per setup, in this
process. One JSON line.

    nice -n 5 .venv/bin/python scripts/bench_server_vs_lite.py --pages 1000 --rounds 2 --rpcs
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colqwen_pipeline.index import bench  # noqa: E402
from colqwen_pipeline.index.bench import SyntheticPages, bench_search, streamed_queries  # noqa: E402
from colqwen_pipeline.index.milvus import MilvusIndex  # noqa: E402
from colqwen_pipeline_tests.milvus_server import milvus_server  # noqa: E402

TIMED = ("search", "query", "get", "load_collection", "has_collection", "describe_collection", "get_collection_stats")


def measured(setup: str, pages: int, queries: int, uri: str, work: Path) -> dict:
    """One round: a fresh searcher process over the kept build of ``setup``."""
    server = setup == "server"
    folder = work / ("server" if server else "lite")
    return bench_search(pages, queries, 0, str(folder), uri if server else None)


def rpc_times(setup: str, pages: int, uri: str, work: Path, queries: int = 20) -> dict:
    """Per search: calls and median ms of each client method, and the whole search's p50."""
    server = setup == "server"
    folder = work / ("server" if server else "lite")
    name = json.loads((folder / bench.BUILD_RECORD).read_text())["name"]
    index = MilvusIndex(
        uri if server else str(folder / "milvus.db"),
        name,
        token_dir=folder / "tokens",
    )
    query_set = streamed_queries(SyntheticPages(pages), queries)
    times: dict[str, list[float]] = collections.defaultdict(list)
    seconds = []
    with index.session(), index.client() as client:
        for method in TIMED:
            setattr(client, method, _timed(getattr(client, method), times[method]))
        index.search(query_set[:1])  # opens and loads
        for kept in times.values():
            kept.clear()  # in place: the wrappers hold these lists
        for query in query_set:
            started = time.perf_counter()
            index.search([query])
            seconds.append(time.perf_counter() - started)
    calls = {
        method: {"per_query": round(len(t) / queries, 2), "median_ms": round(statistics.median(t) * 1000, 1)}
        for method, t in times.items()
        if t
    }
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1), "calls": calls}


def _timed(method: Any, into: list[float]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rpcs", action="store_true", help="time each client call of a few searches")
    parser.add_argument("--work", help="keep the builds and the server's data here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="colqwen-server-vs-lite-"))
    work.mkdir(parents=True, exist_ok=True)
    setups = ["server", "lite"]
    with milvus_server(work / "server-data") as uri:
        for setup in setups:  # builds what is not built yet; its search is not counted (the server indexes)
            measured(setup, args.pages, args.queries, uri, work)  # the build record names the query count
        rounds: dict[str, list[dict]] = {setup: [] for setup in setups}
        for number in range(args.rounds):
            for setup in setups:
                result = measured(setup, args.pages, args.queries, uri, work)
                rounds[setup].append({k: result[k] for k in ("p50_ms", "p95_ms", "recall_at_5")})
                print(f"round {number + 1} {setup}: {rounds[setup][-1]}", file=sys.stderr, flush=True)
        rpcs = {setup: rpc_times(setup, args.pages, uri, work) for setup in setups} if args.rpcs else {}
    p50 = {setup: statistics.median(r["p50_ms"] for r in runs) for setup, runs in rounds.items() if runs}
    print(
        json.dumps(
            {
                "pages": args.pages,
                "queries": args.queries,
                "rounds": rounds,
                "median_p50_ms": p50,
                "server_over_lite": round(p50["server"] / p50["lite"], 2) if len(p50) == 2 else None,
                "rpcs": rpcs,
            }
        )
    )


if __name__ == "__main__":
    main()
