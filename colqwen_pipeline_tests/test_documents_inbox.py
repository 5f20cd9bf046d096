"""Broken files dropped into the inbox beside good ones, ingested by a real Dagster run.

Each broken file must fail its own partition with one line naming the file and the cause, leave no
pages directory and no rows; the good documents must be indexed completely.
"""

from __future__ import annotations

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.defs.runner import ingest
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import SAMPLES, add_sample
from colqwen_pipeline_tests.test_documents import encrypted_pdf, raw_pdf

GOOD = ["pump_maintenance_manual.pdf", "scanned_invoice.jpg"]
ZERO_PAGES = raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def drop_broken_files(state, tmp_path) -> dict[str, str]:
    """Write the broken files into the inbox; returns file name -> the cause its message must give."""
    inbox = state.inbox
    (inbox / "empty.pdf").write_bytes(b"")
    (inbox / "garbage.pdf").write_bytes(b"\x00\x01 not a document at all " * 40)
    manual = (SAMPLES / "pump_maintenance_manual.pdf").read_bytes()
    (inbox / "truncated.pdf").write_bytes(manual[: len(manual) // 2])
    (inbox / "locked.pdf").write_bytes(encrypted_pdf(tmp_path, "s3cret").read_bytes())
    (inbox / "no_pages.pdf").write_bytes(ZERO_PAGES)
    memo = (SAMPLES / "quarterly_memo.docx").read_bytes()
    (inbox / "damaged.docx").write_bytes(memo[: len(memo) // 2])
    return {
        "empty.pdf": "empty file",
        "garbage.pdf": "an unknown binary format, not a document this pipeline reads",
        "truncated.pdf": "cannot render PDF",
        "locked.pdf": "encrypted PDF: no password configured",
        "no_pages.pdf": "PDF has no pages",
        "damaged.docx": "corrupt zip archive",
    }


def test_broken_files_fail_alone_and_good_ones_are_fully_indexed(state, instance, tmp_path):
    for name in GOOD:
        add_sample(state, name)
    broken = drop_broken_files(state, tmp_path)
    echoed: list[str] = []

    summary = ingest(state, instance=instance, echo=echoed.append)

    broken_keys = {document_key(name): name for name in broken}
    assert set(summary.failed) == set(broken_keys)
    index = stages.make_index(state)
    for key, name in broken_keys.items():
        message = summary.failed[key]
        assert message.startswith(f"{name}: ") and "\n" not in message, message
        assert broken[name] in message, message
        assert not any(message in line for line in echoed)  # said once, by the caller (the CLI prints summary.failed)
        assert not (state.pages_dir / key).exists()
        assert index.count_tokens(key) == 0
    assert summary.documents == len(GOOD)
    for name in GOOD:
        key = document_key(name)
        tokens = EmbeddingArtifact.read(state.embeddings_dir / key).total_tokens
        assert tokens > 0 and index.count_tokens(key) == tokens
    assert index.count_tokens() == summary.tokens
