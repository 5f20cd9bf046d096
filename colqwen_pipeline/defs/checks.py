"""Asset checks. Thin: the logic lives in ``colqwen_pipeline.evaluation`` and runs without Dagster.

Per-document checks (embedding_dimension, throughput) are partitioned like their asset, so the UI
shows a result per document. ``@asset_check(partitions_def=...)`` is a preview feature in Dagster
1.13 (inline ``check_specs`` on a partitioned asset are not supported); it is used on purpose and
its PreviewWarning silenced. Collection-wide checks (retrieval_quality, index_fidelity,
collection_consistency) are unpartitioned checks on milvus_collection: they judge the whole index.
"""

import warnings
from typing import Any

import dagster as dg

from colqwen_pipeline.defs.assets import documents, milvus_collection, page_embeddings
from colqwen_pipeline.defs.resources import ColQwenModel, MilvusResource
from colqwen_pipeline.evaluation import collection
from colqwen_pipeline.evaluation.checks import CheckOutcome, check_embeddings, check_throughput
from colqwen_pipeline.settings import Settings


def to_result(outcome: CheckOutcome, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = dict(outcome.metadata)
    for name, rows in outcome.tables.items():
        metadata[name] = _table(rows)
    return dg.AssetCheckResult(
        passed=outcome.passed, severity=severity, description=outcome.description, metadata=metadata
    )


def _table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.text("(none)")
    kinds = {bool: "bool", int: "int", float: "float"}
    columns = [dg.TableColumn(name, kinds.get(type(value), "string")) for name, value in rows[0].items()]
    return dg.MetadataValue.table([dg.TableRecord(row) for row in rows], dg.TableSchema(columns=columns))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)

    @dg.asset_check(asset=page_embeddings, partitions_def=documents, blocking=True)
    def embedding_dimension(context: dg.AssetCheckExecutionContext, model: ColQwenModel) -> dg.AssetCheckResult:
        """Every page has tokens; vectors are the model's dimension (128), finite and unit-norm.
        Blocking: a broken artifact never reaches Milvus."""
        settings = model.settings()
        outcome = check_embeddings(
            settings.embeddings_dir / context.partition_key, settings.embedding_dim, settings.norm_tolerance
        )
        return to_result(outcome, dg.AssetCheckSeverity.ERROR)

    @dg.asset_check(asset=page_embeddings, partitions_def=documents)
    def throughput(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        """Model pages/s of the latest materialisation against the floor of its device type."""
        settings = Settings()
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=page_embeddings.key, asset_partitions=[context.partition_key]), limit=1
        ).records
        if not records:
            missing = CheckOutcome(False, "page_embeddings has no materialisation for this document yet")
            return to_result(missing, dg.AssetCheckSeverity.WARN)
        metrics = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
        floors = {"cpu": settings.min_pages_per_s_cpu, "cuda": settings.min_pages_per_s_cuda}
        return to_result(check_throughput(metrics, floors), dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=milvus_collection)
def retrieval_quality(model: ColQwenModel, milvus: MilvusResource) -> dg.AssetCheckResult:
    """nDCG@5, recall@1/5/10 and MRR@10 of the eval set (COLQWEN_EVAL_SET) on the live collection."""
    settings = _settings(model, milvus)
    return to_result(collection.retrieval_quality(settings), dg.AssetCheckSeverity(settings.quality_severity))


@dg.asset_check(asset=milvus_collection)
def index_fidelity(model: ColQwenModel, milvus: MilvusResource) -> dg.AssetCheckResult:
    """The collection's top-k for the eval queries against exact brute-force MaxSim over the stored
    embeddings: recall@k must reach COLQWEN_FIDELITY_MIN_RECALL (0.99)."""
    return to_result(collection.fidelity(_settings(model, milvus)), dg.AssetCheckSeverity.ERROR)


@dg.asset_check(asset=milvus_collection)
def collection_consistency(milvus: MilvusResource) -> dg.AssetCheckResult:
    """Each document's rows in Milvus equal the tokens of its embeddings; none for vanished documents."""
    return to_result(collection.consistency(milvus.settings()), dg.AssetCheckSeverity.ERROR)


def _settings(model: ColQwenModel, milvus: MilvusResource) -> Settings:
    """The model resource's settings with the Milvus resource's URI and collection."""
    index = milvus.settings()
    return model.settings().model_copy(update={"milvus_uri": index.milvus_uri, "collection": index.collection})


DOCUMENT_CHECKS = [embedding_dimension, throughput]
COLLECTION_CHECKS = [retrieval_quality, index_fidelity, collection_consistency]
CHECKS = DOCUMENT_CHECKS + COLLECTION_CHECKS
