"""A missing inbox or one that lost most of its files is never taken as "delete everything"."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dagster as dg
import pytest
from PIL import Image

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.definitions import RESOURCES, defs
from colqwen_pipeline.defs.automation import inbox_sensor
from colqwen_pipeline.defs.runner import ingest, prune
from colqwen_pipeline.inbox import InboxError, document_key, inbox_files
from colqwen_pipeline_tests.conftest import add_sample


def test_ingest_with_a_missing_inbox_refuses_and_keeps_the_index(state, instance, tmp_path, monkeypatch):
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    key = document_key("scanned_invoice.jpg")
    tokens = stages.make_index(state).count_tokens(key)
    unmounted = state.model_copy(update={"inbox": tmp_path / "unmounted_share" / "inbox"})

    with pytest.raises(InboxError, match="does not exist"):
        ingest(unmounted, instance=instance, echo=lambda _: None)

    assert tokens > 0 and stages.make_index(state).count_tokens(key) == tokens
    assert (state.pages_dir / key).is_dir() and instance.get_dynamic_partitions("documents") == [key]


def test_cli_ingest_with_a_missing_inbox_says_one_line_and_exits_2(state, tmp_path):
    env = os.environ | {"COLQWEN_INBOX": str(tmp_path / "nope")}
    run = subprocess.run(
        [sys.executable, "-m", "colqwen_pipeline.cli", "ingest"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    expected = f"error: inbox {tmp_path / 'nope'} does not exist: create it or set COLQWEN_INBOX"
    assert run.stderr.strip().splitlines()[-1] == expected


def test_inbox_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "inbox").write_text("not a folder")
    with pytest.raises(InboxError, match="is not a folder"):
        inbox_files(tmp_path / "inbox")


def test_prune_refuses_when_most_of_the_inbox_vanished_at_once(state, instance):
    add_sample(state, "scanned_invoice.jpg")
    ingest(state, instance=instance, echo=lambda _: None)
    kept = document_key("scanned_invoice.jpg")
    known = {kept} | {f"ghost-{i}" for i in range(11)}  # 11 of 12 gone: an unmount, not a clean-up
    messages: list[str] = []

    removed = prune(state, instance, {kept}, known, messages.append)

    assert removed == 0
    assert any("11 of 12 indexed documents vanished" in m and "--confirm-removals" in m for m in messages)
    assert prune(state, instance, {kept}, known, messages.append, confirmed=True) == 11


def test_prune_removes_a_few_vanished_documents_without_asking(state, instance):
    known = {f"doc-{i}" for i in range(12)}
    assert prune(state, instance, known - {"doc-0", "doc-1"}, known, lambda _: None) == 2


def test_sensor_keeps_watching_files_that_vanished_en_masse(state, instance):
    old = time.time() - 3600
    for i in range(12):
        path = state.inbox / f"scan-{i:02d}.png"
        Image.new("RGB", (32, 32), "white").save(path)
        os.utime(path, (old, old))
    keys = sorted(inbox_files(state.inbox))
    instance.add_dynamic_partitions("documents", keys)
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=RESOURCES)
    cursor = inbox_sensor(context).cursor
    for path in state.inbox.iterdir():
        path.unlink()

    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=RESOURCES)
    result = inbox_sensor(context)

    assert [r.job_name for r in result.run_requests] == []
    assert result.dynamic_partitions_requests == []
    assert sorted(instance.get_dynamic_partitions("documents")) == keys
    assert result.cursor == ""  # no cursor: the next tick plans again, and refuses again until confirmed
    again = inbox_sensor(dg.build_sensor_context(instance=instance, cursor="", definitions=defs, resources=RESOURCES))
    assert again.run_requests == [] and sorted(instance.get_dynamic_partitions("documents")) == keys
