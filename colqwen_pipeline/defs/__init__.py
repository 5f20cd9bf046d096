"""Dagster wiring only: every asset here is a few lines over ``colqwen_pipeline.stages``."""
