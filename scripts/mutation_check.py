"""Break the code each strengthened test guards and check that the test fails (issue 27).

Each mutation replaces one exact piece of source text in a temporary copy of the repository
(tracked and untracked files, as `git ls-files` lists them; the virtual environment is linked,
not copied), runs the one test that must catch it there, and restores the file. A mutation is

- caught: the test failed (pytest exit code 1) on the mutated code,
- missed: the test passed on the mutated code (the test cannot fail: strengthen it),
- stale: its source text is no longer in the file (the code moved: update the mutation),
- error: pytest could not run the test (exit code 2-5, or a timeout).

    python scripts/mutation_check.py            # every mutation; a table, then a JSON line
    python scripts/mutation_check.py --list     # names only
    python scripts/mutation_check.py bulk-rerun-loads-the-model cron-ignores-the-setting
    python scripts/mutation_check.py --baseline # also run each test on unmutated code first

Exit status 0 only when every selected mutation was caught. Long (a few minutes per Dagster or
Milvus-server test): `make mutation-check`, not CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = "colqwen_pipeline_tests"
TIMEOUT_S = 1200


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    test: str  # the pytest node id that must fail
    why: str


MUTATIONS = [
    Mutation(
        "bulk-rerun-loads-the-model",
        "colqwen_pipeline/bulk/engine.py",
        "    def _flush(self, wave: list[tuple[DocumentResult, Any]]) -> None:\n        if not wave:",
        "    def _flush(self, wave: list[tuple[DocumentResult, Any]]) -> None:\n        self.embedder()\n"
        "        if not wave:",
        f"{TESTS}/test_bulk.py::test_an_unchanged_rerun_renders_embeds_and_writes_nothing",
        "every wave asks for the model, so an unchanged re-run loads it (issue 27: the test passed)",
    ),
    Mutation(
        "reingest-keeps-old-generations",
        "colqwen_pipeline/index/milvus.py",
        "        if len(generations) == 1:  # a first write, unraced",
        "        if True:  # a first write, unraced",
        f"{TESTS}/test_pipeline_end_to_end.py::test_reingest_leaves_one_copy_of_rows",
        "the old generation is never deleted: a re-ingest leaves two copies (issue 27: the test passed)",
    ),
    Mutation(
        "render-workers-mix-up-files",
        "colqwen_pipeline/bulk/engine.py",
        "futures = [pool.submit(self.prepare, key, files.get(key)) for key in keys]",
        "futures = [pool.submit(self.prepare, key, files.get(keys[-1] if workers > 1 else key)) for key in keys]",
        f"{TESTS}/test_bulk.py::test_render_workers_give_the_same_index",
        "with several render workers every document gets the pages of one file",
    ),
    Mutation(
        "every-wave-reloads-the-model",
        "colqwen_pipeline/embedding/registry.py",
        "        if spec not in _loaded:\n            unload_locked()",
        "        if True:\n            unload_locked()",
        f"{TESTS}/test_automation.py::test_a_bulk_run_indexes_good_documents_and_fails_the_broken_one_alone",
        "the model is loaded again for every wave of a run, not once",
    ),
    Mutation(
        "cron-ignores-the-setting",
        "colqwen_pipeline/defs/automation.py",
        "cron_schedule=Settings().reindex_cron,",
        'cron_schedule="0 2 * * *",',
        f"{TESTS}/test_automation.py::test_the_schedule_runs_at_the_configured_cron",
        "COLQWEN_REINDEX_CRON is ignored (the old test compared the default with itself)",
    ),
    Mutation(
        "run-in-threads-ignores-hung-threads",
        f"{TESTS}/conftest.py",
        "    hung = sum(thread.is_alive() for thread in threads)",
        "    hung = 0",
        f"{TESTS}/test_conftest_helpers.py::test_run_in_threads_reports_errors_and_threads_that_outlive_the_timeout",
        "a thread still running after the timeout goes unreported (the helper's old behaviour)",
    ),
    Mutation(
        "search-answers-lack-page-urls",
        "colqwen_pipeline/service/searching.py",
        '    return hit | {"image_path": image_path, "page_url": page_url(hit["doc_id"], hit["page"])}',
        '    return hit | {"image_path": image_path}',
        f"{TESTS}/test_search_under_load.py::test_an_ingest_gets_its_turn_while_four_clients_loop_on_search",
        "answers lack what clients read: only the client threads see it, and their exceptions were lost",
    ),
    Mutation(
        "quality-check-shifts-pages",
        "colqwen_pipeline/evaluation/retrieval.py",
        "        ranking = [page_id(h.doc_id, h.page) for h in hits]",
        "        ranking = [page_id(h.doc_id, h.page + 1) for h in hits]",
        f"{TESTS}/test_pipeline_end_to_end.py::test_ingest_twice_against_a_milvus_server_keeps_the_checks_passing",
        "retrieval_quality judges hits one page off: with minimums of 0 it still passed",
    ),
    Mutation(
        "search-key-may-delete",
        "colqwen_pipeline/service/auth.py",
        '    ("DELETE", "/documents/{doc_id}"): Access.ADMIN,',
        '    ("DELETE", "/documents/{doc_id}"): Access.SEARCH,',
        f"{TESTS}/test_web.py::test_every_registered_route_checks_its_scope",
        "a search key may remove documents (the old test walked 5 routes of about 20, with one key)",
    ),
    Mutation(
        "workspace-loses-the-schedule",
        "colqwen_pipeline/defs/definitions.py",
        "schedules=SCHEDULES,",
        "schedules=SCHEDULES[:0],",
        f"{TESTS}/test_definitions.py::test_dagster_validates_the_workspace_and_finds_the_projects_jobs",
        "the workspace still validates but the nightly reindex is gone (the old test read only the exit status)",
    ),
    Mutation(
        "event-log-engine-per-event",
        "colqwen_pipeline/defs/event_log.py",
        "        kept = self._kept.pop(shard, None)\n",
        "        kept = None\n",
        f"{TESTS}/test_event_log.py::test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs",
        "a new engine and file opening for every event, as Dagster's own SQLite storage does (issue 29)",
    ),
    Mutation(
        "event-log-checkpoints-every-event",
        "colqwen_pipeline/defs/event_log.py",
        '    connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()\n    return connection',
        "    connection.close()\n    return connection",
        f"{TESTS}/test_event_log.py::test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs",
        "no idle connection holds the file: every event's close is the last one and checkpoints the WAL",
    ),
    Mutation(
        "event-log-fsyncs-every-commit",
        "colqwen_pipeline/defs/event_log.py",
        '    dbapi_connection.execute("PRAGMA synchronous=NORMAL")',
        "    pass",
        f"{TESTS}/test_event_log.py::test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs",
        "every event's commit waits for an fsync again",
    ),
    Mutation(
        "event-log-keeps-every-run-shard-open",
        "colqwen_pipeline/defs/event_log.py",
        "        for name in run_shards[:-RUN_SHARDS_KEPT]:",
        "        for name in run_shards[:0]:",
        f"{TESTS}/test_event_log.py::test_it_keeps_only_the_latest_run_shards_open",
        "a long-lived webserver or daemon would hold a file open for every run it ever read",
    ),
    Mutation(
        "event-log-follows-dagster-home",
        "colqwen_pipeline/defs/event_log.py",
        'super().__init__(os.path.join(instance.root_directory, "history", "runs"), self._inst_data)',
        'super().__init__(os.path.join(os.environ["DAGSTER_HOME"], "history", "runs"), self._inst_data)',
        f"{TESTS}/test_event_log.py::test_the_cli_instance_writes_dagsters_default_files_readable_both_ways",
        "an instance opened by its directory would read and write another instance's events",
    ),
    Mutation(
        "event-log-inspects-columns-per-event",
        "colqwen_pipeline/defs/event_log.py",
        "        if not self._asset_key_index_cols:",
        "        if True:",
        f"{TESTS}/test_event_log.py::test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs",
        "every asset event would inspect the asset keys table's columns again",
    ),
    Mutation(
        "planning-imports-torch",
        "colqwen_pipeline/embedding/identity.py",
        'if requested == "cpu" or (requested == "auto" and not any(map(os.path.exists, GPU_DEVICE_NODES))):',
        "if False:",
        f"{TESTS}/test_embedding.py::test_planning_on_a_host_without_a_gpu_imports_no_torch",
        "every sensor tick and unchanged ingest would spend seconds importing torch on a CPU host",
    ),
    Mutation(
        "event-group-commits-each-statement",
        "colqwen_pipeline/defs/event_log.py",
        '        grouped = getattr(self._group, "connections", None)\n        if grouped is not None:',
        "        grouped = None\n        if grouped is not None:",
        f"{TESTS}/test_event_log.py::test_a_group_of_events_is_one_commit_per_file_or_nothing",
        "a document's events would be half-written by an interrupt, at a connection per statement",
    ),
    Mutation(
        "event-group-never-commits",
        "colqwen_pipeline/defs/event_log.py",
        "                for connection in connections.values():\n                    connection.commit()",
        "                pass",
        f"{TESTS}/test_event_log.py::test_a_group_of_events_is_one_commit_per_file_or_nothing",
        "every grouped event (a document's materialisations) would be lost when its group closes",
    ),
    Mutation(
        "event-log-looks-up-tables-per-event",
        "colqwen_pipeline/defs/event_log.py",
        "            self._tables_present.add(table_name)",
        "            pass",
        f"{TESTS}/test_event_log.py::test_a_run_builds_each_engine_once_skips_checkpoints_and_fsyncs",
        "Dagster would build an engine and open index.db before every asset event's tags",
    ),
    Mutation(
        "planned-events-one-at-a-time",
        "colqwen_pipeline/defs/event_log.py",
        "        os.environ.setdefault(*EVENT_BATCH_SIZE)",
        "        pass",
        f"{TESTS}/test_event_log.py::test_dagster_hands_a_runs_planned_events_over_as_one_batch",
        "a run's creation would write its 4 planned events per document one transaction each",
    ),
]


def copy_repo(target: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), plus a link to the venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = REPO / raw.decode()
        if source.is_file():
            destination = target / raw.decode()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    venv = REPO / ".venv"
    if venv.exists():
        (target / ".venv").symlink_to(venv.resolve())


def run_test(copy: Path, test: str) -> tuple[int, float, str]:
    env = os.environ | {"PYTHONPATH": str(copy)}  # the copy's code wins over any installed one
    env.pop("PYTEST_XDIST_WORKER", None)
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", test]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, time.monotonic() - started, f"timed out after {TIMEOUT_S} s"
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, time.monotonic() - started, tail[-1] if tail else ""


def check(copy: Path, mutation: Mutation, baseline: bool) -> dict:
    path = copy / mutation.file
    original = path.read_text()
    record = {"mutation": mutation.name, "test": mutation.test, "why": mutation.why}
    if original.count(mutation.old) != 1:
        return record | {"result": "stale", "detail": f"source text found {original.count(mutation.old)} times"}
    if baseline:
        code, seconds, tail = run_test(copy, mutation.test)
        if code != 0:
            return record | {"result": "error", "detail": f"fails unmutated ({code}): {tail}"}
    path.write_text(original.replace(mutation.old, mutation.new))
    try:
        code, seconds, tail = run_test(copy, mutation.test)
    finally:
        path.write_text(original)
    result = {0: "missed", 1: "caught"}.get(code, "error")
    return record | {"result": result, "exit_code": code, "seconds": round(seconds, 1), "detail": tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--baseline", action="store_true", help="first check each test passes unmutated")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.list:
        for mutation in MUTATIONS:
            print(f"{mutation.name:40} {mutation.test}")
        return 0
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    results = []
    with tempfile.TemporaryDirectory(prefix="colqwen-mutants-") as temporary:
        copy = Path(temporary) / "repo"
        copy_repo(copy)
        for mutation in chosen:
            record = check(copy, mutation, args.baseline)
            results.append(record)
            print(f"{record['result']:7} {mutation.name:40} {record.get('seconds', '')!s:>7} {record['detail']}")
            sys.stdout.flush()
    caught = sum(r["result"] == "caught" for r in results)
    print(json.dumps({"caught": caught, "of": len(results), "results": results}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
