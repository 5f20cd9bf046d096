"""The one Dagster ``Definitions`` of the project (``dagster dev -w workspace.yaml``)."""

import dagster as dg

from colqwen_pipeline.defs.assets import ASSETS, ingest_job
from colqwen_pipeline.defs.resources import ColQwenModel, MilvusResource

RESOURCES = {"model": ColQwenModel(), "milvus": MilvusResource()}

defs = dg.Definitions(assets=ASSETS, jobs=[ingest_job], resources=RESOURCES)
