"""`bench search` at any size: pages drawn one at a time from their seed, the truth streamed chunk by
chunk with a running top-5, and the figures the issue names, through a real Milvus Lite file."""

from __future__ import annotations

import mmap

import numpy as np

from colqwen_pipeline.index.bench import (
    TOKENS,
    StreamingTruth,
    SyntheticPages,
    bench_search,
    rss_anon_bytes,
    streamed_queries,
    synthetic_pages,
    synthetic_queries,
)
from colqwen_pipeline.index.maxsim import maxsim_uniform


def test_pages_streamed_in_chunks_are_the_pages_drawn_at_once():
    tokens, centres = synthetic_pages(35)
    source = SyntheticPages(35)

    streamed = list(source.chunks(10))

    assert [first for first, _ in streamed] == [0, 10, 20, 30]
    np.testing.assert_array_equal(np.concatenate([chunk for _, chunk in streamed]), tokens)
    for a, b in zip(streamed_queries(source, 4), synthetic_queries(tokens, centres, 4), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_streamed_truth_is_the_exact_top_5_over_every_page():
    tokens, centres = synthetic_pages(60)
    queries = synthetic_queries(tokens, centres, 6)
    truth = StreamingTruth(queries)

    for first, chunk in SyntheticPages(60).chunks(20):
        truth.add(first, chunk)

    for i, query in enumerate(queries):
        assert truth.top(i) == set(np.argsort(-maxsim_uniform(query, tokens, TOKENS))[:5].tolist())
    assert all(seconds > 0 for seconds in truth.seconds)


def test_the_bench_reports_the_figures_the_issue_names(tmp_path):
    result = bench_search(pages=30, queries=3, layra_queries=0, workdir=str(tmp_path))

    assert result["pages"] == 30 and result["recall_at_5"] == 1.0  # 30 pages are scored exactly
    assert 0 < result["p50_ms"] <= result["p95_ms"] and result["brute_force_p50_ms"] > 0
    assert 10_000 < result["bytes_per_page_disk"] < 10 * 283_000  # the Lite file, not a guess
    assert isinstance(result["rss_anon_bytes_per_page"], int) and result["build_s"] > 0


def test_a_second_run_in_the_same_workdir_reuses_the_build_and_other_settings_rebuild(tmp_path):
    def records_written() -> int:  # every page write appends a record to the token store
        return sum(path.stat().st_size for path in tmp_path.rglob("records.bin"))

    first = bench_search(pages=30, queries=3, layra_queries=0, workdir=str(tmp_path))
    written = records_written()
    again = bench_search(pages=30, queries=3, layra_queries=0, workdir=str(tmp_path))

    assert records_written() == written > 0
    assert (again["recall_at_5"], again["bytes_per_page_disk"]) == (first["recall_at_5"], first["bytes_per_page_disk"])
    bench_search(pages=30, queries=2, layra_queries=0, workdir=str(tmp_path))
    assert records_written() > written


def test_rss_anon_reads_this_process():
    # A fresh private mapping, not numpy: malloc may hand back heap that an earlier test in this
    # worker freed but kept resident, and then nothing new shows up (seen once in CI). A shared
    # mapping would count as RssShmem instead.
    size = 64 << 20
    before = rss_anon_bytes()
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as held:
        for offset in range(0, size, mmap.PAGESIZE):  # one byte per page makes each one resident
            held[offset] = 1
        assert rss_anon_bytes() - before > 60 << 20
