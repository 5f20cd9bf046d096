"""Dagster wiring only: every asset here is a few lines over ``colqwen_pipeline.bulk``."""

import warnings

import dagster as dg

# Dagster 1.13 warns about the sensor's `owners` parameter (beta) whenever it copies a sensor to
# bind resources, although this project never sets it: not a warning a user can act on.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)
