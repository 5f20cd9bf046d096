"""Small breaks a hostile afternoon found: odd document ids, odd queries, odd arguments, odd paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colqwen_pipeline.bulk.engine import run_documents
from colqwen_pipeline.cli import build_parser
from colqwen_pipeline.inbox import document_key, inbox_files
from colqwen_pipeline.index.base import IndexRefused, PageRows
from colqwen_pipeline.index.milvus import MilvusIndex
from colqwen_pipeline.service.limits import Refused, check_query


def page(seed: int) -> PageRows:
    vectors = np.random.default_rng(seed).standard_normal((20, 128)).astype(np.float32)
    return PageRows(1, f"{seed:064d}", vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "p.png")


def test_non_ascii_document_ids_filter_and_control_characters_are_refused(tmp_path: Path):
    index = MilvusIndex(str(tmp_path / "milvus.db"), "odd")
    index.replace_document("résumé-é", "résumé.pdf", [page(1)], "model-x", 128)
    index.replace_document("plain", "plain.pdf", [page(2)], "model-x", 128)

    hits = index.search([page(1).vectors[:3]], top_k=5, doc_ids=["résumé-é"])[0]

    assert [h.doc_id for h in hits] == ["résumé-é"]
    with pytest.raises(IndexRefused, match="control character"):
        index.search([page(1).vectors[:3]], doc_ids=["bad\x00id"])


def test_a_query_with_a_lone_surrogate_is_refused_not_a_500(state):
    with pytest.raises(Refused, match="lone surrogate"):
        check_query("invoice \udc80 total", state)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_top_k_below_one_is_an_argument_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["search", "invoice", "--top-k", value])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_path_longer_than_the_index_stores_fails_alone_before_any_artifact(state):
    deep = state.inbox
    for level in range(5):
        deep = deep / (f"{level}" * 240)
    deep.mkdir(parents=True)
    Image.new("RGB", (100, 100), "white").save(deep / "scan.png")
    Image.new("RGB", (100, 100), "white").save(state.inbox / "short.png")
    keys = sorted(inbox_files(state.inbox))

    report = run_documents(state, keys)

    (long_key,) = [k for k in keys if k != document_key("short.png")]
    assert "characters, over the 1024 the index stores" in report.failed[long_key]
    assert not (state.pages_dir / long_key).exists() and not (state.embeddings_dir / long_key).exists()
    assert list(report.failed) == [long_key]


def test_links_out_of_the_inbox_are_not_documents(state, tmp_path):
    outside = tmp_path / "private.png"
    Image.new("RGB", (50, 50), "white").save(outside)
    Image.new("RGB", (50, 50), "white").save(state.inbox / "inside.png")
    (state.inbox / "outside_link.png").symlink_to(outside)
    (state.inbox / "inside_link.png").symlink_to(state.inbox / "inside.png")
    (state.inbox / "passwd_link.pdf").symlink_to("/etc/passwd")

    names = sorted(path.name for path in inbox_files(state.inbox).values())

    assert names == ["inside.png", "inside_link.png"]


def test_a_newline_in_a_file_name_stays_in_one_failure_line(state):
    (state.inbox / "bad\nname.pdf").write_bytes(b"")  # empty: fails with its name in the reason
    Image.new("RGB", (60, 60), "white").save(state.inbox / "good.png")
    keys = sorted(inbox_files(state.inbox))

    report = run_documents(state, keys, until="pages")

    (reason,) = report.failed.values()
    assert "\n" not in reason and reason.startswith("bad\\nname.pdf: ") and "empty" in reason
    assert len(report.documents) == 2 and len(report.failed) == 1


def test_temporaries_left_by_killed_runs_are_swept_and_a_live_one_is_kept(state):
    import os
    import tempfile
    import time

    Image.new("RGB", (60, 60), "white").save(state.inbox / "good.png")
    state.pages_dir.mkdir(parents=True)
    state.embeddings_dir.mkdir(parents=True)
    stale = [
        state.pages_dir / ".good.png-1a2b3c4d.tmp-x1",  # a render killed mid-document
        state.embeddings_dir / ".good.png-1a2b3c4d.y2",  # an artifact killed before its rename
        Path(tempfile.mkdtemp(prefix="colqwen-office-")),  # a worker killed during conversion
    ]
    live = state.pages_dir / ".other.pdf-00000000.tmp-z3"  # another run's, still being written
    for folder in [*stale, live]:
        folder.mkdir(exist_ok=True)
        (folder / "page-0001.png").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for folder in stale:
        os.utime(folder, (two_hours_ago, two_hours_ago))

    report = run_documents(state, sorted(inbox_files(state.inbox)), until="pages")

    assert report.failed == {}
    assert [folder.exists() for folder in stale] == [False, False, False]
    assert live.exists()
