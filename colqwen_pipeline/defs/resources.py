"""Dagster resources. Empty fields mean "use the COLQWEN_* setting", so the same definitions run
on a laptop and in a deployment that sets environment variables; secrets never live here."""

import dagster as dg

from colqwen_pipeline.settings import Settings


class ColQwenModel(dg.ConfigurableResource):
    """ColQwen2.5 loaded once per process (module-level cache), shared by all documents of a run."""

    model: str = ""
    base_model: str = ""
    device: str = ""
    precision: str = ""
    batch_size: int = 0
    max_visual_tokens: int = 0

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
