"""Rehearse several model servers: two `serve` processes, two concurrent ingests through both, a crash.

In a temporary directory, with the tiny model and no Redis (so every page is a forward pass):
1. **spread**: two `colqwen-pipeline serve` processes; two `colqwen-pipeline ingest` processes at
   once, each over its own inbox, state directory and Milvus Lite index (the way two deployments,
   or two teams, share a pool of model servers; one state directory runs its GPU steps one at a
   time, docs/deployment.md), both with COLQWEN_MODEL_SERVER_URL=a,b. Each server's /info says how
   many pages it embedded: both must have some, and together exactly the pages of both inboxes.
2. **failover**: the same again over fresh inboxes, and one server is killed (SIGKILL) once it has
   embedded a few pages of this round, while both ingests run. Both must complete through the other
   server, with every document indexed once: in each index, every document's token vectors (over
   every generation on disk) equal the tokens its embedding artifact holds.

COLQWEN_MODEL points nowhere in the ingests, so any in-process model load would fail. Prints one
JSON line; exit 0 when every check passed.

    .venv/bin/python scripts/rehearse_model_servers.py [--docs 6] [--pages 2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from colqwen_pipeline.bulk.bench import make_document  # noqa: E402
from colqwen_pipeline.embedding.server_scaling import ServeProcess, served, serving, stop_serve  # noqa: E402

REQUEST_PAGES = 2  # small requests: many of them, so both servers get some and a kill lands mid-run
WAVE_PAGES = 4  # pages embedded together before a Milvus write (COLQWEN_EMBED_WAVE_PAGES)
FAILOVER = "the request goes to another"  # the client's warning when a server failed a request


def say(message: str) -> None:
    print(f"[model servers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_env(root: Path, model: Path, name: str) -> dict[str, str]:
    return {
        "COLQWEN_MODEL": str(model),
        "COLQWEN_HOME": str(root / name),
        "COLQWEN_INBOX": str(root / name / "inbox"),
        "COLQWEN_SERVER_MAX_IMAGES": str(REQUEST_PAGES),
    }


def make_inbox(root: Path, name: str, docs: int, pages: int, seed: int) -> dict[str, str]:
    """A state directory with its own inbox of generated PDFs; the ingest's COLQWEN_* settings."""
    inbox = root / name / "inbox"
    inbox.mkdir(parents=True)
    for i in range(docs):
        make_document(inbox / f"{name}-{i:03d}.pdf", pages, seed + i)
    return {"COLQWEN_HOME": str(root / name / "var"), "COLQWEN_INBOX": str(inbox)}


def start_ingest(settings: dict[str, str], urls: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLQWEN_")} | settings
    env.pop("DAGSTER_HOME", None)  # each state directory has its own Dagster instance
    env |= {
        "COLQWEN_MODEL_SERVER_URL": urls,
        "COLQWEN_MODEL": "/nowhere/no-model",  # any load in the ingest itself would fail
        "COLQWEN_EMBED_WAVE_PAGES": str(WAVE_PAGES),
        "COLQWEN_MODEL_SERVER_COOLDOWN_S": "600",  # the killed server stays out for the rest of the run
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "colqwen_pipeline.cli", "ingest"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def index_check(settings: dict[str, str]) -> dict[str, Any]:
    """Every inbox document in the index, each with exactly the token vectors its artifact holds."""
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
    from colqwen_pipeline.inbox import inbox_files
    from colqwen_pipeline.index import make_index
    from colqwen_pipeline.settings import Settings

    config = Settings(_env_file=None, home=Path(settings["COLQWEN_HOME"]), inbox=Path(settings["COLQWEN_INBOX"]))
    keys = sorted(inbox_files(config.inbox))
    artifacts = {key: EmbeddingArtifact.read_or_none(config.embeddings_dir / key) for key in keys}
    written = {key: artifact.total_tokens for key, artifact in artifacts.items() if artifact}
    indexed = make_index(config).token_counts_by_document()
    return {
        "documents": len(keys),
        "indexed": len(indexed),
        "missing": sorted(set(keys) - set(indexed)),
        "not_embedded": sorted(set(keys) - set(written)),
        "token_mismatches": {k: [n, written.get(k, 0)] for k, n in indexed.items() if n != written.get(k, 0)},
        "tokens": sum(indexed.values()),
    }


def finish(ingests: list[subprocess.Popen], logs: list[Path], timeout_s: float) -> list[dict[str, Any]]:
    results = []
    for process, log in zip(ingests, logs, strict=True):
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        failovers = [line for line in log.read_text(errors="replace").splitlines() if FAILOVER in line]
        causes = sorted({line.split(" failed /", 1)[1].split(" (", 1)[1].split(":", 1)[0] for line in failovers})
        results.append({"exit": code, "failovers": len(failovers), "causes": causes, "log": str(log)})
    return results


def counts(servers: list[ServeProcess]) -> list[int]:
    return [served(s.url)["images"] for s in servers]


def spread_round(root: Path, servers: list[ServeProcess], args: argparse.Namespace) -> dict[str, Any]:
    urls = ",".join(s.url for s in servers)
    inboxes = [make_inbox(root, f"spread-{i}", args.docs, args.pages, seed=100 * i) for i in range(2)]
    before, started = counts(servers), time.perf_counter()
    logs = [root / f"spread-{i}.log" for i in range(2)]
    results = finish([start_ingest(env, urls, log) for env, log in zip(inboxes, logs, strict=True)], logs, 600)
    per_server = [after - b for after, b in zip(counts(servers), before, strict=True)]
    checks = [index_check(env) for env in inboxes]
    pages = 2 * args.docs * args.pages
    ok = all(r["exit"] == 0 for r in results) and all(n > 0 for n in per_server) and sum(per_server) == pages
    ok = ok and all(not c["missing"] and not c["not_embedded"] and not c["token_mismatches"] for c in checks)
    seconds = round(time.perf_counter() - started, 1)
    return {"ok": ok, "pages": pages, "pages_per_server": per_server, "seconds": seconds, "ingests": results} | {
        "indexes": checks
    }


def failover_round(root: Path, servers: list[ServeProcess], args: argparse.Namespace) -> dict[str, Any]:
    urls = ",".join(s.url for s in servers)
    inboxes = [make_inbox(root, f"failover-{i}", args.docs, args.pages, seed=1000 + 100 * i) for i in range(2)]
    victim, survivor = servers
    before, started = counts(servers), time.perf_counter()
    logs = [root / f"failover-{i}.log" for i in range(2)]
    ingests = [start_ingest(env, urls, log) for env, log in zip(inboxes, logs, strict=True)]
    victim_pages = wait_until_busy(victim, before[0], ingests, args.kill_after)
    running_at_kill = all(p.poll() is None for p in ingests)
    say(f"SIGKILL to the server at {victim.url} after {victim_pages} page(s) of this round")
    stop_serve(victim, signal.SIGKILL)
    results = finish(ingests, logs, 600)
    survivor_pages = served(survivor.url)["images"] - before[1]
    checks = [index_check(env) for env in inboxes]
    pages = 2 * args.docs * args.pages
    ok = running_at_kill and all(r["exit"] == 0 for r in results) and survivor_pages > 0
    ok = ok and all(not c["missing"] and not c["not_embedded"] and not c["token_mismatches"] for c in checks)
    return {
        "ok": ok,
        "pages": pages,
        "killed": victim.url,
        "killed_after_pages": victim_pages,
        "ingests_running_at_kill": running_at_kill,
        "survivor_pages": survivor_pages,
        "failovers": sum(r["failovers"] for r in results),
        "failover_causes": sorted({cause for r in results for cause in r["causes"]}),
        "seconds": round(time.perf_counter() - started, 1),
        "ingests": results,
        "indexes": checks,
    }


def wait_until_busy(server: ServeProcess, before: int, ingests: list[subprocess.Popen], pages: int) -> int:
    """Pages the server embedded this round, once that is at least ``pages`` and it is embedding more
    (so the kill cuts a request in flight), or once an ingest ended."""
    while True:
        state = served(server.url)
        done = state["images"] - before
        if (done >= pages and state["images_in_progress"]) or any(p.poll() is not None for p in ingests):
            return done
        time.sleep(0.02)


def rehearse(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    model = build_tiny_model(root / "model")
    envs = [server_env(root, model, f"server-{name}") for name in "ab"]
    for env in envs:
        Path(env["COLQWEN_INBOX"]).mkdir(parents=True)
    with serving(envs, root / "logs") as servers:
        say(f"servers READY at {', '.join(s.url for s in servers)}")
        spread = spread_round(root, servers, args)
        say(f"spread: {json.dumps({k: spread[k] for k in ('ok', 'pages_per_server', 'seconds')})}")
        failover = failover_round(root, servers, args)
    return {"ok": spread["ok"] and failover["ok"], "docs_per_ingest": args.docs, "pages_per_doc": args.pages} | {
        "spread": spread,
        "failover": failover,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=6, help="documents per inbox (two inboxes per round)")
    parser.add_argument("--pages", type=int, default=2, help="pages per document")
    parser.add_argument("--kill-after", type=int, default=4, help="pages the doomed server embeds before SIGKILL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="colqwen-model-servers-"))
    started = time.perf_counter()
    try:
        summary = rehearse(root, args)
    except Exception as error:  # noqa: BLE001 - one line in the summary, whatever failed
        summary = {"ok": False, "error": f"{type(error).__name__}: {str(error).strip()[:500]}"}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if args.keep or not summary["ok"]:
        summary["kept"] = str(root)
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
