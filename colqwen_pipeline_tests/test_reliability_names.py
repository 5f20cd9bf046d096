"""A file name that is not UTF-8 (issue 26, item 1; `search --doc` of such bytes, item 8).

A Latin-1 ``caf\\xe9.pdf`` from a Samba share or an old archive reaches Python with a lone surrogate
in its name. It is indexed under a stable ASCII key (the hash of its bytes), shown as ``caf\\xe9.pdf``
wherever a name is shown, and the other documents are indexed beside it: through the CLI (a real
subprocess), the sensor's tick, Dagster's partitions, Milvus rows, and a real ``serve``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import SAMPLES, free_port
from colqwen_pipeline_tests.test_server import wait_ready

ODD = b"caf\xe9.pdf"  # Latin-1: not valid UTF-8
ODD_KEY = "caf_.pdf-16aac950"  # slug + the hash of its bytes: pinned, a key must never change
SHOWN = "caf\\xe9.pdf"  # how it is shown: the odd byte as an escape, as `ls -b` does
GOOD = "scanned_invoice.jpg"
KEY = "test-key-0123456789abcdef"
OLD = time.time() - 3600


def odd_inbox(root: Path, model_dir: Path) -> dict[str, str]:
    """The environment of a state directory whose inbox holds a good document and the odd-named PDF."""
    inbox = root / "inbox"
    inbox.mkdir()
    shutil.copy(SAMPLES / GOOD, inbox / GOOD)
    shutil.copy(SAMPLES / "pump_maintenance_manual.pdf", os.path.join(os.fsencode(inbox), ODD))
    for name in os.listdir(os.fsencode(inbox)):  # settled, for the sensor
        os.utime(os.path.join(os.fsencode(inbox), name), (OLD, OLD))
    return {
        "COLQWEN_HOME": str(root / "var"),
        "COLQWEN_INBOX": str(inbox),
        "COLQWEN_MODEL": str(model_dir),
        "DAGSTER_HOME": str(root / "var" / "dagster"),
    }


def cli(env: dict[str, str], *args: str | bytes, timeout: float = 300) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_"))} | env
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "colqwen_pipeline.cli", *args]
    return subprocess.run(command, env=clean, capture_output=True, timeout=timeout)


def test_the_key_is_the_hash_of_the_names_bytes_and_stays_ascii() -> None:
    assert document_key(os.fsdecode(ODD)) == ODD_KEY
    assert document_key(os.fsdecode(b"caf\xc3\xa9.pdf")) == document_key("café.pdf")  # UTF-8 keys unchanged
    assert document_key("café.pdf") != ODD_KEY


@pytest.mark.slow  # a subprocess ingest
def test_cli_ingest_indexes_a_name_that_is_not_utf8_beside_the_others(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = odd_inbox(tmp_path, tiny_model_dir)

    whole = cli(env, "ingest")
    assert whole.returncode == 0, whole.stderr.decode(errors="replace")[-3000:]
    assert b"done: 2 documents" in whole.stdout and b"0 failed" in whole.stdout, whole.stdout

    one = cli(env, "ingest", os.path.join(os.fsencode(env["COLQWEN_INBOX"]), ODD))  # one path, as its bytes
    assert one.returncode == 0, one.stderr.decode(errors="replace")[-3000:]
    assert b"done: 1 document" in one.stdout

    found = cli(env, "search", "--doc", ODD, "pump maintenance")  # --doc as the name's bytes...
    assert found.returncode == 0, found.stderr.decode(errors="replace")[-3000:]
    assert f"{SHOWN} page 1".encode() in found.stdout
    shown = cli(env, "search", "--doc", SHOWN, "pump maintenance")  # ...or as it is shown
    assert shown.returncode == 0 and f"{SHOWN} page 1".encode() in shown.stdout

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert ODD_KEY in instance.get_dynamic_partitions("documents")
        assert instance.get_materialized_partitions(dg.AssetKey("milvus_collection")) == {ODD_KEY, document_key(GOOD)}


@pytest.mark.slow  # a subprocess ingest and search
def test_search_doc_of_bytes_that_are_no_document_says_so_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = odd_inbox(tmp_path, tiny_model_dir)
    os.remove(os.path.join(os.fsencode(env["COLQWEN_INBOX"]), ODD))
    assert cli(env, "ingest").returncode == 0

    result = cli(env, "search", "--doc", b"\xff", "pump")

    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --doc '\\xff' is no indexed document; indexed: "), lines


def test_sensor_tick_requests_the_odd_name_and_the_others(state, instance) -> None:
    from colqwen_pipeline.definitions import RESOURCES, defs
    from colqwen_pipeline.defs.automation import inbox_sensor

    shutil.copy(SAMPLES / GOOD, state.inbox / GOOD)
    shutil.copy(SAMPLES / "pump_maintenance_manual.pdf", os.path.join(os.fsencode(state.inbox), ODD))
    for name in os.listdir(os.fsencode(state.inbox)):
        os.utime(os.path.join(os.fsencode(state.inbox), name), (OLD, OLD))

    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=RESOURCES)
    result = inbox_sensor(context)

    added = {key for request in result.dynamic_partitions_requests for key in request.partition_keys}
    assert added == {ODD_KEY, document_key(GOOD)}
    assert len(result.run_requests) == 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A CLI-ingested state directory with the odd name, and `serve` on it with an API key."""
    root = tmp_path_factory.mktemp("odd-serve")
    env = odd_inbox(root, tiny_model_dir)
    assert cli(env, "ingest").returncode == 0
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN_", "DAGSTER_"))}
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "colqwen_pipeline.cli", "serve", "--port", str(port)],
        env=clean | env | {"COLQWEN_SERVER_API_KEYS": KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, root / "serve.log")
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=120) as client:
            yield client, env
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow  # the web server over a subprocess ingest
def test_server_lists_searches_and_deletes_a_name_that_is_not_utf8(served) -> None:
    client, env = served

    listed = client.get("/documents")
    assert listed.status_code == 200, listed.text
    entries = {d["doc_id"]: d for d in listed.json()["documents"]}
    assert entries[ODD_KEY]["document"] == SHOWN and entries[ODD_KEY]["status"] == "indexed"
    assert entries[document_key(GOOD)]["status"] == "indexed"

    page = client.get("/", params={"q": "pump maintenance"})
    assert page.status_code == 200 and SHOWN in page.text
    hits = client.post("/search", json={"query": "pump maintenance", "top_k": 10})
    assert hits.status_code == 200 and SHOWN in {hit["document"] for hit in hits.json()["results"]}

    removed = client.delete(f"/documents/{ODD_KEY}", params={"confirm": SHOWN})
    assert removed.status_code == 200 and removed.json()["removed"] == SHOWN
    assert os.listdir(os.fsencode(env["COLQWEN_INBOX"])) == [GOOD.encode()]
    after = {d["doc_id"]: d for d in client.get("/documents").json()["documents"]}
    assert set(after) == {document_key(GOOD)} and after[document_key(GOOD)]["status"] == "indexed"
    assert (
        client.delete(f"/documents/{document_key(GOOD)}", params={"confirm": GOOD}).status_code == 200
    )  # every DELETE still answers

    restored = client.post(f"/documents/{ODD_KEY}/restore")  # back from the trash under its own bytes
    assert restored.status_code == 200 and restored.json()["restored"] == SHOWN, restored.text
    assert os.listdir(os.fsencode(env["COLQWEN_INBOX"])) == [ODD]


def test_doc_as_the_bare_bytes_of_a_name_in_a_folder_finds_it(state) -> None:
    from colqwen_pipeline.cli.search_scope import _matches

    key = document_key(os.fsdecode(b"old/" + ODD))
    names = {key: f"old/{SHOWN}"}  # as indexed_names shows it

    assert _matches(state, {key}, names, os.fsdecode(ODD)) == [key]
    assert _matches(state, {key}, names, SHOWN) == [key]
