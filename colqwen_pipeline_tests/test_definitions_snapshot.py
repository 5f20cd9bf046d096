"""A snapshot of the whole Dagster graph (assets, checks, jobs, sensors, schedules, partitions,
pools, resources), as dagster-open-platform keeps one: a change to the graph shows in review as a
change to ``snapshots/definitions.json``. Refresh it with ``COLQWEN_UPDATE_SNAPSHOTS=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from colqwen_pipeline.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def describe(definitions: dg.Definitions) -> dict[str, Any]:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "pools": sorted(node.pools or []),
            "code_version": node.code_version,
            "kinds": sorted(node.kinds),
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "checks": sorted(check.name for check in graph.get_check_keys_for_assets({key})),
        }
    checks = {
        f"{spec.asset_key.to_user_string()}:{spec.name}": {"blocking": spec.blocking}
        for spec in sorted(_check_specs(definitions), key=lambda s: (s.asset_key.to_user_string(), s.name))
    }
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(job.name for job in definitions.jobs or []),
        "sensors": {
            sensor.name: {"jobs": sorted(j.name for j in sensor.jobs), "interval_s": sensor.minimum_interval_seconds}
            for sensor in definitions.sensors or []
        },
        "schedules": {
            schedule.name: {"cron": schedule.cron_schedule, "job": schedule.job_name}
            for schedule in definitions.schedules or []
        },
        "resources": sorted(definitions.resources or {}),
    }


def _partitions(partitions: dg.PartitionsDefinition | None) -> str | None:
    if partitions is None:
        return None
    return f"{type(partitions).__name__}({getattr(partitions, 'name', '')})"


def _check_specs(definitions: dg.Definitions) -> list[dg.AssetCheckSpec]:
    return [spec for asset in definitions.assets or [] for spec in getattr(asset, "check_specs", [])]


def test_the_definitions_match_their_snapshot():
    current = describe(defs)
    if os.environ.get("COLQWEN_UPDATE_SNAPSHOTS") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the Dagster graph changed: review the difference, then refresh with COLQWEN_UPDATE_SNAPSHOTS=1"
    )
