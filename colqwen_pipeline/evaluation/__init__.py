"""Evaluation: ranking metrics, eval sets, and the logic of the asset checks (no Dagster here)."""
