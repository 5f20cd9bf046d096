"""Dagster resources. Empty fields mean "use the COLQWEN_* setting", so the same definitions run
on a laptop and in a deployment that sets environment variables; secrets never live here."""

import dagster as dg

from colqwen_pipeline.settings import Settings


class ColQwenModel(dg.ConfigurableResource):
    """ColQwen2.5 loaded once per process (module-level cache), shared by all documents of a run.

    Remote mode: with ``model_server_url`` (or COLQWEN_MODEL_SERVER_URL) set, nothing is loaded in
    the run; pages go to that `colqwen-pipeline serve`, so every run shares its one loaded model."""

    model: str = ""
    base_model: str = ""
    device: str = ""
    precision: str = ""
    batch_size: int = 0
    max_visual_tokens: int = 0
    model_server_url: str = ""

    def settings(self) -> Settings:
        overrides = {name: value for name, value in self.model_dump().items() if value}
        return Settings().model_copy(update=overrides)

    def embedder(self):
        from colqwen_pipeline.embedding.service import get_embedder

        return get_embedder(self.settings())


class MilvusResource(dg.ConfigurableResource):
    uri: str = ""
    collection: str = ""

    def settings(self) -> Settings:
        overrides = {"milvus_uri": self.uri, "collection": self.collection}
        return Settings().model_copy(update={k: v for k, v in overrides.items() if v})
