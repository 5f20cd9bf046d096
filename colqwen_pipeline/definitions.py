"""The one Dagster ``Definitions`` of the project (``dagster dev -w workspace.yaml``)."""

import dagster as dg

from colqwen_pipeline.defs.assets import ASSETS
from colqwen_pipeline.defs.automation import JOBS, SCHEDULES, SENSORS
from colqwen_pipeline.defs.checks import CHECKS
from colqwen_pipeline.defs.resources import ColQwenModel, MilvusResource

RESOURCES = {"model": ColQwenModel(), "milvus": MilvusResource()}

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=RESOURCES,
)
