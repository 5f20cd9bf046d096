"""The one Dagster ``Definitions`` of the project, built here in ``defs/`` (``colqwen_pipeline.definitions``
re-exports it for ``workspace.yaml`` and ``dagster dev``)."""

import dagster as dg

from colqwen_pipeline.defs.assets import ASSETS
from colqwen_pipeline.defs.automation import JOBS, SCHEDULES, SENSORS
from colqwen_pipeline.defs.resources import ColQwenResource

RESOURCES = {"colqwen": ColQwenResource()}

defs = dg.Definitions(assets=ASSETS, jobs=JOBS, sensors=SENSORS, schedules=SCHEDULES, resources=RESOURCES)
