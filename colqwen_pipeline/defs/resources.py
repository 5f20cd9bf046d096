"""The one resource: every setting the Dagster layer passes down comes from here. Empty fields mean
"use the COLQWEN_* setting", so the same definitions run on a laptop and in a deployment that sets
environment variables; secrets never live here."""

import dagster as dg

from colqwen_pipeline.settings import Settings


class ColQwenResource(dg.ConfigurableResource):
    """Settings for the assets, checks, sensor, schedule and removal op alike.

    The model is loaded once per process (module-level cache) and shared by every document of a
    run. Remote mode: with ``model_server_url`` set, nothing is loaded in the run; pages go to that
    `colqwen-pipeline serve`, so every run shares its one loaded model."""

    home: str = ""
    inbox: str = ""
    model: str = ""
    base_model: str = ""
    device: str = ""
    precision: str = ""
    batch_size: int = 0
    max_visual_tokens: int = 0
    model_server_url: str = ""
    milvus_uri: str = ""
    collection: str = ""

    def settings(self) -> Settings:
        """The COLQWEN_* settings with this resource's non-empty fields on top, validated like them
        (``model_copy(update=)`` would not: a ``home`` given here stayed a ``str``)."""
        overrides = {name: value for name, value in self.model_dump().items() if value}
        return Settings(**overrides)
