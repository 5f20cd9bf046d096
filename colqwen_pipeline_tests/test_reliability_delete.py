"""A document removed while another process indexes it (issue 26, item 2), across real processes.

A CLI ``ingest`` of three documents runs while a real ``serve`` deletes one of them: the delete is
sent as soon as that document's pages are on disk (polled), while a 30-page sibling keeps the
run's embedding wave busy. The ingest must not write the removed document back (no rows, no
artifacts, no orphan rows for the next run's checks), and must not fail the other two."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import SAMPLES, free_port
from colqwen_pipeline_tests.test_server import wait_ready

KEY = "test-key-0123456789abcdef"
DOOMED, BIG, SMALL = "a_doomed.pdf", "b_big.pdf", "c_small.jpg"


def many_page_pdf(path: Path, pages: int) -> None:
    images = []
    for number in range(pages):
        image = Image.new("RGB", (850, 1100), "white")
        ImageDraw.Draw(image).text((80, 80 + 20 * number), f"section {number}: pump valve inspection", fill="black")
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:])


@pytest.fixture
def deployment(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(SAMPLES / "pump_maintenance_manual.pdf", inbox / DOOMED)
    many_page_pdf(inbox / BIG, 30)
    shutil.copy(SAMPLES / "scanned_invoice.jpg", inbox / SMALL)
    env = {
        "COLQWEN_HOME": str(tmp_path / "var"),
        "COLQWEN_INBOX": str(inbox),
        "COLQWEN_MODEL": str(tiny_model_dir),
        "DAGSTER_HOME": str(tmp_path / "var" / "dagster"),
        "COLQWEN_SERVER_API_KEYS": KEY,
        "COLQWEN_SERVER_INDEX_UPLOADS": "never",
    }
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    return {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_"))} | env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "colqwen_pipeline.cli", *args]


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(poll_s)


@pytest.mark.slow  # a subprocess ingest raced by a delete
def test_a_delete_during_another_processs_ingest_is_not_written_back(deployment, tmp_path: Path) -> None:
    settings = Settings(home=deployment["COLQWEN_HOME"], inbox=deployment["COLQWEN_INBOX"])
    doomed = document_key(DOOMED)
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(command("serve", "--port", str(port)), env=deployment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, tmp_path / "serve.log")
        with (tmp_path / "ingest.log").open("wb") as log:
            ingest = subprocess.Popen(command("ingest"), env=deployment, stdout=log, stderr=subprocess.STDOUT)
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=120) as client:
            wait_for(lambda: (settings.pages_dir / doomed / "manifest.json").is_file(), 240, f"{doomed} rendered")
            assert ingest.poll() is None, "the ingest ended before the delete could land inside it"
            removed = client.delete(f"/documents/{doomed}", params={"confirm": DOOMED})
            assert removed.status_code == 200, removed.text
            assert ingest.poll() is None, "the delete did not land inside the ingest"
            assert ingest.wait(timeout=600) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
            output = (tmp_path / "ingest.log").read_text()

            assert f"{DOOMED}: removed while it was being indexed" in output, output[-3000:]
            assert "0 failed" in output, output[-3000:]
            listed = {d["doc_id"]: d["status"] for d in client.get("/documents").json()["documents"]}
            assert listed == {document_key(BIG): "indexed", document_key(SMALL): "indexed"}
            hits = client.post("/search", json={"query": "pump valve", "top_k": 50}).json()["results"]
            assert hits and doomed not in {hit["doc_id"] for hit in hits}
            assert client.get(f"/pages/{doomed}/1").status_code == 404
        assert not (settings.pages_dir / doomed).exists() and not (settings.embeddings_dir / doomed).exists()

        # --force: an unchanged inbox launches no run, and the collection checks run with a run
        again = subprocess.run(
            command("ingest", "--force"), env=deployment, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "collection_consistency: passed" in again.stdout and "0 removed" in again.stdout, again.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
