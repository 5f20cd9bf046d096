"""Processes take turns at a Milvus Lite file in arrival order, and the threads of one process share
its client (issue 20, item 4: a writer starved behind a busy searcher; searches raced each other)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from colqwen_pipeline.index.connection import TurnQueue
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline_tests.conftest import run_in_threads
from colqwen_pipeline_tests.test_index import DIM, unit_pages

# A searcher process that keeps the Lite file busy from 4 threads until told to stop: each thread
# loops on search, so some search of that process is nearly always in flight.
SEARCH_LOOP = textwrap.dedent(
    """
    import sys, threading, time, numpy as np
    from pathlib import Path
    from colqwen_pipeline.index.milvus import MilvusIndex
    uri, stop, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    query = np.ones((4, {dim}), dtype=np.float32) / np.sqrt({dim})
    counts, errors = [0] * 4, []
    def loop(i):
        index = MilvusIndex(uri, "test_pages", lock_wait_s=60)
        while not stop.exists():
            try:
                index.search([query], top_k=3)
                counts[i] += 1
                if sum(counts) >= 8:
                    ready.touch()
            except Exception as error:
                import traceback; errors.append(traceback.format_exc()[-1500:].replace(chr(10), ' | '))
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(sum(counts), len(errors), errors[:1])
    """
).format(dim=DIM)


def test_a_writer_gets_its_turn_while_another_process_searches_from_four_threads(tmp_path: Path):
    uri = str(tmp_path / "milvus.db")
    MilvusIndex(uri, "test_pages").replace_document("doc-a", "a.pdf", unit_pages(1, 3), "model-x", DIM)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    searcher = subprocess.Popen(
        [sys.executable, "-c", SEARCH_LOOP, uri, str(stop), str(ready)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and searcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the searcher never got going"
        # Polling for the file's lock lost every race to the searcher (297 s, then a failure);
        # in turn, the writer waits at most for the searches in flight.
        writer = MilvusIndex(uri, "test_pages", lock_wait_s=30)
        for seed in range(2, 5):
            writer.replace_document(f"doc-{seed}", f"{seed}.pdf", unit_pages(seed, 2), "model-x", DIM)
        assert writer.document_ids() == {"doc-a", "doc-2", "doc-3", "doc-4"}
    finally:
        stop.touch()
        try:
            out, _ = searcher.communicate(timeout=120)
        finally:
            searcher.kill()  # never left behind by a failed test (a no-op once it has exited)
    searches, errors, first_error = out.split(" ", 2)
    assert int(errors) == 0, first_error
    assert int(searches) >= 8


def test_threads_of_one_process_share_one_client_and_never_race(tmp_path: Path):
    uri = str(tmp_path / "milvus.db")
    MilvusIndex(uri, "test_pages").replace_document("doc-a", "a.pdf", unit_pages(1, 40), "model-x", DIM)
    query = unit_pages(9, 1)[0].vectors[:5]
    expected = [(h.doc_id, h.page) for h in MilvusIndex(uri, "test_pages").search([query], top_k=5)[0]]
    seen = []

    def loop() -> None:
        index = MilvusIndex(uri, "test_pages")  # a fresh object per request, as the HTTP server makes
        for _ in range(10):
            seen.append([(h.doc_id, h.page) for h in index.search([query], top_k=5)[0]])

    errors = run_in_threads(loop, count=8, timeout_s=300)
    assert errors == []
    assert len(seen) == 80 and all(result == expected for result in seen)


def test_the_ticket_of_a_killed_process_does_not_block_the_queue(tmp_path: Path):
    lite_file = tmp_path / "milvus.db"
    MilvusIndex(str(lite_file), "test_pages").replace_document("doc-a", "a.pdf", unit_pages(1, 1), "m", DIM)
    holder = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from colqwen_pipeline.index.connection import TurnQueue
        TurnQueue(Path({str(lite_file)!r})).enter()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", holder], check=False, timeout=60)
    queue = TurnQueue(lite_file)
    assert len(os.listdir(queue.folder)) == 1, "the killed process left its ticket behind"

    assert MilvusIndex(str(lite_file), "test_pages", lock_wait_s=5).count_tokens() == 40
    assert os.listdir(queue.folder) == []


def test_a_process_waits_its_turn_and_says_who_holds_the_file(tmp_path: Path):
    lite_file = tmp_path / "milvus.db"
    index = MilvusIndex(str(lite_file), "test_pages")
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 1), "m", DIM)
    with index.session():  # this process holds the file
        code = (
            "from colqwen_pipeline.index.milvus import MilvusIndex;"
            f"MilvusIndex({str(lite_file)!r}, 'test_pages', lock_wait_s=1).count_tokens()"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0
    last = other.stderr.strip().splitlines()[-1]
    assert "stayed busy" in last and f"process {os.getpid()} holds it" in last
    assert np.isclose(index.count_tokens(), 40)


# Another local process that knows the port, trying tokens: none, guesses, pymilvus's default.
INTRUDER = textwrap.dedent(
    """
    import sys
    from pymilvus import MilvusClient
    for token in sys.argv[2:]:
        try:
            print("listed", sorted(MilvusClient(uri=sys.argv[1], token=token, timeout=10).list_collections()))
        except Exception as error:
            print("refused", str(error).splitlines()[0][:200])
    """
)


def test_the_lite_port_serves_only_the_process_holding_the_file(tmp_path: Path):
    from colqwen_pipeline.index import lite_server

    uri = str(tmp_path / "milvus.db")
    index = MilvusIndex(uri, "test_pages")
    index.replace_document("doc-a", "a.pdf", unit_pages(1, 3), "model-x", DIM)
    with index.session():
        endpoint = lite_server.start(Path(uri))  # the endpoint this process's client uses
        assert endpoint.uri.startswith("http://127.0.0.1:")
        tokens = ["", "guess", "root:Milvus", endpoint.token]  # the last only the owner knows
        intruder = subprocess.run(
            [sys.executable, "-c", INTRUDER, endpoint.uri, *tokens], capture_output=True, text=True, timeout=120
        )
        lines = intruder.stdout.splitlines()
        assert len(lines) == 4, intruder.stdout + intruder.stderr
        assert all(line.startswith("refused") for line in lines[:3]), lines
        # the port is live: only the token matters
        assert lines[3].startswith("listed") and "test_pages" in lines[3], lines
        hits = index.search([unit_pages(1, 1)[0].vectors], top_k=1)  # the owner is served as before
        assert hits and hits[0][0].doc_id == "doc-a"
