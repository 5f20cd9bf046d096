"""Jobs, sensors and schedules (see the automation issue)."""

from colqwen_pipeline.defs.assets import ingest_job

JOBS: list = [ingest_job]
SENSORS: list = []
SCHEDULES: list = []
