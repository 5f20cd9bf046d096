"""Cost of reading run failures for GET /documents and the sensor's first tick
(defs/instance.failed_since_change) on a temporary SQLite Dagster instance.

    .venv/bin/python scripts/bench_failure_lookup.py [--documents 5000] [--failed 200]

Records ``--failed`` failure observations among ``--documents`` inbox files, then times the lookup
for all of them and for 20. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    import dagster as dg

    from colqwen_pipeline.defs.instance import failed_since_change

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--failed", type=int, default=200)
    args = parser.parse_args()
    inbox = Path(tempfile.mkdtemp(prefix="colqwen-failure-lookup-"))
    files = {}
    for i in range(args.documents):
        path = inbox / f"doc{i:05d}.pdf"
        path.write_bytes(b"")
        files[f"doc{i:05d}.pdf-00000000"] = path
    step = max(1, args.documents // args.failed)
    with dg.instance_for_test() as instance:
        for doc_id in list(files)[::step][: args.failed]:
            observation = dg.AssetObservation("page_images", partition=doc_id, description=f"{doc_id}: empty file")
            instance.report_runless_asset_event(observation)
        timings = {}
        for label, subset in (("all", files), ("twenty", dict(list(files.items())[:20]))):
            start = time.perf_counter()
            found = failed_since_change(instance, subset)
            elapsed_ms = round((time.perf_counter() - start) * 1000, 1)
            timings[label] = {"documents": len(subset), "failed": len(found), "ms": elapsed_ms}
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
