"""`/search` under load while an ingest writes the same Milvus Lite file (issue 20, item 4: with 4
clients looping on /search, a one-document ingest waited 297 s and failed, and the server
answered 500 when its own threads raced for the file). A bounded load loop on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import SAMPLES, free_port
from colqwen_pipeline_tests.test_server import wait_ready

pytestmark = pytest.mark.slow
CLIENTS = 4


def _cli(env: dict[str, str], *arguments: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "colqwen_pipeline.cli", *arguments], env=env, **kwargs)


def test_an_ingest_gets_its_turn_while_four_clients_loop_on_search(tmp_path: Path, tiny_model_dir: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "first.pdf").write_bytes((SAMPLES / "pump_maintenance_manual.pdf").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | {
        "COLQWEN_HOME": str(tmp_path / "var"),
        "COLQWEN_INBOX": str(inbox),
        "COLQWEN_MODEL": str(tiny_model_dir),
    }
    assert _cli(env, "ingest").wait(timeout=600) == 0
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = _cli(env, "serve", "--port", str(port), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    statuses: Counter[int] = Counter()
    stop = threading.Event()
    errors: list[str] = []  # what a client thread raised: it ends that client, so it must fail the test

    def search(client: httpx.Client) -> None:
        response = client.post(f"{url}/search", json={"query": "filter cartridge", "top_k": 3})
        statuses[response.status_code] += 1
        if response.status_code == 200:  # what a user's client reads of each answer
            hits = response.json()["results"]
            assert len(hits) == 3 and all(hit["page_url"].startswith("/pages/") for hit in hits), hits

    def loop() -> None:
        try:
            with httpx.Client(timeout=180) as client:
                while not stop.is_set():
                    search(client)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(error))

    try:
        wait_ready(url, server, log_path)
        clients = [threading.Thread(target=loop, daemon=True) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        (inbox / "second.pdf").write_bytes((SAMPLES / "acme_annual_report_2025.pdf").read_bytes())
        ingest = _cli(env, "ingest", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = ingest.communicate(timeout=600)
        stop.set()
        for client in clients:
            client.join(timeout=300)
        assert not any(client.is_alive() for client in clients), "a client's request never returned"
        assert errors == []
        assert ingest.returncode == 0, (out + err)[-2000:]
        assert "Traceback" not in err
        assert set(statuses) == {200}, statuses  # no 500, no refusal
        assert statuses[200] >= CLIENTS
        found = httpx.post(f"{url}/search", json={"query": "revenue", "top_k": 20}, timeout=180).json()
        assert document_key("second.pdf") in {hit["doc_id"] for hit in found["results"]}
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
