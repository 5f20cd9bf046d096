"""The four assets, partitioned by document. Artifacts live under the state directory; each asset
returns metadata only, so no heavy array ever goes through an IO manager."""

import time

import dagster as dg

from colqwen_pipeline import stages
from colqwen_pipeline.defs.resources import ColQwenModel, MilvusResource
from colqwen_pipeline.documents.manifest import DocumentError
from colqwen_pipeline.documents.preview import thumbnails_markdown
from colqwen_pipeline.embedding.embedder import EmbeddingError
from colqwen_pipeline.embedding.service import RANDOM_WEIGHTS_WARNING
from colqwen_pipeline.settings import Settings

documents = dg.DynamicPartitionsDefinition(name="documents")
GROUP = "colqwen"


@dg.asset(partitions_def=documents, group_name=GROUP, kinds={"file"})
def raw_documents(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The source file in the inbox, identified by its content hash."""
    source = stages.describe_source(Settings(), context.partition_key)
    return dg.MaterializeResult(metadata=source, data_version=dg.DataVersion(source["sha256"]))


@dg.asset(partitions_def=documents, group_name=GROUP, deps=[raw_documents], kinds={"pdf", "image"})
def page_images(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Rasterised pages (PNG) plus a manifest with each page's pixel hash."""
    started = time.perf_counter()
    try:
        manifest = stages.rasterize_stage(Settings(), context.partition_key, log=context.log.info)
    except DocumentError as error:
        raise dg.Failure(description=str(error)) from error
    settings = Settings()
    pages_dir = settings.pages_dir / context.partition_key
    return dg.MaterializeResult(
        metadata={
            "pages": len(manifest.pages),
            "kind": manifest.kind,
            "renderer": manifest.pages[0].renderer if manifest.pages else "",
            "path": dg.MetadataValue.path(str(pages_dir)),
            "first_page": dg.MetadataValue.path(str(pages_dir / manifest.pages[0].file)),
            "preview": dg.MetadataValue.md(thumbnails_markdown(pages_dir, manifest)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset(
    partitions_def=documents,
    group_name=GROUP,
    deps=[page_images],
    pool="gpu",
    kinds={"pytorch"},
    backfill_policy=dg.BackfillPolicy.single_run(),  # a backfill of N documents: one run, one model load
)
def page_embeddings(context: dg.AssetExecutionContext, model: ColQwenModel) -> dg.MaterializeResult:
    """ColQwen2.5 multi-vectors (128-d per token) of every page; unchanged pages come from the cache.

    One partition per run (ingest, sensor) or many (a single-run backfill): each document gets its
    own metadata. A failed document fails the run after the others are written, so a retry only
    embeds what failed (the rest is reused from their artifacts).
    """
    settings = model.settings()
    failed: dict[str, str] = {}
    for key in context.partition_keys:
        try:
            context.add_asset_metadata(_embed_partition(context, settings, key), partition_key=key)
        except (OSError, ValueError, DocumentError, EmbeddingError) as error:  # this document's pages, not the model
            failed[key] = f"{type(error).__name__}: {error}"
            context.log.error(f"{key}: {failed[key]}")
    if len(failed) == 1 and len(context.partition_keys) == 1:
        raise dg.Failure(description=next(iter(failed.values())))
    if failed:
        raise dg.Failure(description=f"embedding failed for {len(failed)} document(s): {failed}")
    return dg.MaterializeResult()


def _embed_partition(context: dg.AssetExecutionContext, settings: Settings, key: str) -> dict:
    artifact, metrics = stages.embed_stage(settings, key, log=context.log.info)
    if metrics["random_weights"]:
        context.log.warning(RANDOM_WEIGHTS_WARNING)
        metrics["warning"] = RANDOM_WEIGHTS_WARNING
    metrics = {k: v for k, v in metrics.items() if v is not None}
    return metrics | {"path": dg.MetadataValue.path(str(artifact.directory))}


@dg.asset(partitions_def=documents, group_name=GROUP, deps=[page_embeddings], kinds={"milvus"})
def milvus_collection(context: dg.AssetExecutionContext, milvus: MilvusResource) -> dg.MaterializeResult:
    """The document's token vectors in Milvus, replacing any earlier copy (exactly one remains)."""
    settings = milvus.settings()
    started = time.perf_counter()
    tokens = stages.index_stage(settings, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "tokens_indexed": tokens,
            "collection": settings.collection,
            "uri": settings.resolved_milvus_uri,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


ASSETS = [raw_documents, page_images, page_embeddings, milvus_collection]
ingest_job = dg.define_asset_job("ingest_document", selection=ASSETS, partitions_def=documents)
