"""The embedding engine with the tiny model on CPU: loading (directory, adapter + local base,
quantised), batching and out-of-memory back-off, the Redis cache (a real redis-server), the
artifact, one model load for many documents, and a single-run backfill on a real Dagster instance."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.embedding import registry
from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
from colqwen_pipeline.embedding.embedder import EmbeddingError, LocalEmbedder, group_batches
from colqwen_pipeline.embedding.identity import ModelLoadError, ModelSpec, identify
from colqwen_pipeline.embedding.loading import load_model
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline_tests.conftest import SAMPLES, add_sample, free_port

HUB_ID_THAT_DOES_NOT_EXIST = "nonexistent-org/colqwen2.5-base-test"


@pytest.fixture
def empty_redis(redis_url: str) -> str:
    """The session's real redis-server, on a database of this file's own, emptied for each test."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    return url


def rasterized(settings, name: str) -> str:
    add_sample(settings, name)
    key = document_key(name)
    stages.rasterize_stage(settings, key, log=lambda _: None)
    return key


def load(source: Path, tmp_path: Path, **spec) -> LocalEmbedder:
    model, processor, identity = load_model(ModelSpec(str(source), device="cpu", **spec), tmp_path / "views")
    return LocalEmbedder(model, processor, identity, batch_size=4)


@pytest.fixture(scope="module")
def page_images():
    """Two real pages of a sample PDF, rendered with pypdfium2, plus a smaller rendering of one."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(SAMPLES / "pump_maintenance_manual.pdf")
    images = [pdf[i].render(scale=100 / 72).to_pil() for i in range(2)] + [pdf[0].render(scale=40 / 72).to_pil()]
    pdf.close()
    return images


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter shaped like vidore/colqwen2.5-v0.2 (q/v LoRA + custom_text_proj saved in full)
    whose adapter_config names a hub id that does not exist, as on an offline machine."""
    from colpali_engine.models import ColQwen2_5
    from peft import LoraConfig, get_peft_model

    base = ColQwen2_5.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["custom_text_proj"],
        init_lora_weights=False,
    )
    directory = tmp_path_factory.mktemp("adapter") / "colqwen-adapter"
    get_peft_model(base, config).save_pretrained(directory)
    adapter_config = json.loads((directory / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = HUB_ID_THAT_DOES_NOT_EXIST
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config))
    return directory


def test_local_directory_loads_with_fingerprint_and_normalised_vectors(tiny_model_dir, tmp_path, page_images):
    embedder = load(tiny_model_dir, tmp_path, precision="fp32")

    vectors = embedder.embed_images(page_images[:1])[0]

    identity = embedder.identity
    assert (identity.device, identity.precision, identity.attention) == ("cpu", "fp32", "sdpa")
    assert identity.fingerprint == f"{tiny_model_dir.name}@{identity.revision[:12]}/colqwen2.5/d128/fp32/vt768"
    assert identity.random_weights
    assert vectors.dtype == np.float16 and vectors.shape[1] == 128
    assert embedder.visual_tokens(page_images[0]) <= 768 < len(vectors) + 768  # visual tokens + the prompt
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)  # no zero padding rows


def test_adapter_loads_over_a_local_base_copy_and_changes_the_vectors(
    tiny_model_dir, adapter_dir, tmp_path, page_images
):
    base_copy = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "colqwen2.5-base")
    plain = load(tiny_model_dir, tmp_path, precision="fp32")

    adapted = load(adapter_dir, tmp_path, precision="fp32", base_model=str(base_copy))

    assert adapted.identity.base_model == str(base_copy.resolve())
    assert adapted.fingerprint != plain.fingerprint
    base_vectors, adapter_vectors = plain.embed_images(page_images[:1])[0], adapted.embed_images(page_images[:1])[0]
    assert base_vectors.shape == adapter_vectors.shape
    assert np.abs(base_vectors.astype(np.float32) - adapter_vectors.astype(np.float32)).max() > 0.05


def test_adapter_without_a_local_base_fails_at_once_naming_the_setting(adapter_dir):
    with pytest.raises(ModelLoadError, match="set COLQWEN_BASE_MODEL") as error:
        identify(ModelSpec(str(adapter_dir)))
    assert HUB_ID_THAT_DOES_NOT_EXIST in str(error.value)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "does not exist: set COLQWEN_MODEL"),
        ("no_config", "neither config.json nor adapter_config.json: set COLQWEN_MODEL"),
        ("corrupt_weights", "cannot load model from .*check COLQWEN_MODEL"),
    ],
)
def test_broken_weights_give_one_clear_error(breakage, expected, tiny_model_dir, tmp_path):
    broken = tmp_path / "model"
    if breakage != "missing":
        shutil.copytree(tiny_model_dir, broken)
    if breakage == "no_config":
        (broken / "config.json").unlink()
    if breakage == "corrupt_weights":
        (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")

    with pytest.raises(ModelLoadError, match=expected):
        load_model(ModelSpec(str(broken), device="cpu"), tmp_path / "views")


def test_hub_id_offline_and_not_cached_names_the_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set.*set COLQWEN_MODEL"):
        identify(ModelSpec(HUB_ID_THAT_DOES_NOT_EXIST))


@pytest.mark.parametrize("precision", ["4bit", "8bit"])
def test_quantised_loading_embeds_on_cpu(precision, tiny_model_dir, tmp_path, page_images):
    import bitsandbytes as bnb

    embedder = load(tiny_model_dir, tmp_path, precision=precision)

    layer_type = bnb.nn.Linear4bit if precision == "4bit" else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer_type) for m in embedder.model.modules())
    assert embedder.fingerprint.endswith(f"/colqwen2.5/d128/{precision}/vt768")
    vectors = embedder.embed_images(page_images[:1])[0].astype(np.float32)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-2)


def test_batches_hold_one_token_count_so_batch_size_changes_nothing(tiny_model_dir, tmp_path, page_images):
    assert group_batches([744, 432, 744, 744, 432, 744, 744], 4) == [[1, 4], [0, 2, 3, 5], [6]]
    embedder = load(tiny_model_dir, tmp_path, precision="bf16")  # bf16: where padding changed vectors
    embedder.batch_size = 1
    one_by_one = embedder.embed_images(page_images)

    embedder.batch_size = 4
    batched = embedder.embed_images(page_images)

    assert embedder.stats.batch_size_used == 2  # the two full-size pages ran together, the small one alone
    for alone, together in zip(one_by_one, batched, strict=True):
        assert np.array_equal(alone, together)


def test_out_of_memory_halves_the_batch_and_carries_on(tiny_model_dir, tmp_path, page_images, caplog):
    """torch.OutOfMemoryError only happens on CUDA: a wrapped forward raises it for batches over 1 page."""
    import torch

    embedder = load(tiny_model_dir, tmp_path, precision="fp32")
    pages = [page_images[0]] * 4
    expected = embedder.embed_images(pages[:1])[0]
    real_forward = embedder._forward

    def forward_with_room_for_one_page(inputs):
        if len(inputs["input_ids"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return real_forward(inputs)

    embedder._forward = forward_with_room_for_one_page
    embedder.stats.batch_size_used = 0
    with caplog.at_level(logging.WARNING):
        vectors = embedder.embed_images(pages)

    assert all(np.array_equal(v, expected) for v in vectors)
    assert (embedder.stats.oom_backoffs, embedder.stats.batch_size_used, embedder.effective_batch_size) == (2, 1, 1)
    assert "retrying with 2" in caplog.text and "retrying with 1" in caplog.text


def test_out_of_memory_with_one_page_says_what_to_change(tiny_model_dir, tmp_path, page_images):
    """Simulated as above: the real error exists only on CUDA."""
    import torch

    embedder = load(tiny_model_dir, tmp_path, precision="fp32")

    def forward_with_no_room(inputs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")

    embedder._forward = forward_with_no_room
    with pytest.raises(EmbeddingError, match="COLQWEN_MAX_VISUAL_TOKENS"):
        embedder.embed_images(page_images[:2])


def test_second_materialisation_is_served_from_redis_without_a_forward(state, empty_redis, monkeypatch):
    monkeypatch.setenv("COLQWEN_REDIS_URL", empty_redis)
    settings = type(state)()
    key = rasterized(settings, "pump_maintenance_manual.pdf")
    first_artifact, first = stages.embed_stage(settings, key)
    first_vectors = np.array(first_artifact.vectors)
    shutil.rmtree(first_artifact.directory)  # so the pages can only come from Redis
    registry.unload()  # as in a fresh process
    loads = registry.loads_so_far()

    artifact, second = stages.embed_stage(settings, key)

    assert (first["cache_misses"], first["pages_embedded"]) == (3, 3) and first["model_forwards"] >= 1
    assert (second["cache_hits"], second["cache_misses"], second["model_forwards"]) == (3, 0, 0)
    assert registry.loads_so_far() == loads  # every page cached: the model was not even loaded
    assert np.array_equal(np.asarray(artifact.vectors), first_vectors)
    import redis

    model_key = registry.open_cache(settings, registry.model_identity(settings)).model_key
    stored = redis.Redis.from_url(empty_redis).get(f"cache:embed:image:{model_key}:{artifact.pages[0]['sha256']}")
    assert len(stored) == artifact.pages[0]["count"] * 128 * 2  # fp16 bytes, not JSON


def test_unchanged_document_reuses_its_artifact_without_redis(state):
    key = rasterized(state, "scanned_invoice.jpg")
    stages.embed_stage(state, key)

    _, second = stages.embed_stage(state, key)

    assert (second["pages_reused_from_artifact"], second["model_forwards"], second["cache_enabled"]) == (1, 0, False)


def test_redis_down_warns_once_and_embeds_anyway(state, monkeypatch, caplog):
    monkeypatch.setenv("COLQWEN_REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    settings = type(state)()
    keys = [rasterized(settings, "scanned_invoice.jpg"), rasterized(settings, "pump_maintenance_manual.pdf")]

    with caplog.at_level(logging.WARNING):
        results = [stages.embed_stage(settings, key)[1] for key in keys]

    assert [r["pages_embedded"] for r in results] == [1, 3]
    assert not any(r["cache_enabled"] for r in results)
    warnings = [r.message for r in caplog.records if "Redis cache" in r.message]
    assert len(warnings) == 1 and "secret" not in warnings[0]


def test_query_embeddings_are_cached_under_text_keys(state, empty_redis, monkeypatch):
    monkeypatch.setenv("COLQWEN_REDIS_URL", empty_redis)
    settings = type(state)()
    first, cache = registry.embed_queries_cached(settings, ["replace the filter cartridge"])
    forwards = registry.get_embedder(settings).stats.forward_calls

    second, second_cache = registry.embed_queries_cached(settings, ["replace the filter cartridge"])

    assert (cache.misses, second_cache.hits) == (1, 1)
    assert registry.get_embedder(settings).stats.forward_calls == forwards
    assert np.array_equal(first[0], second[0]) and first[0].dtype == np.float32
    import redis

    assert redis.Redis.from_url(empty_redis).keys(f"cache:embed:text:{cache.model_key}:*")


def test_many_documents_share_one_model_load(state):
    keys = [
        rasterized(state, n)
        for n in ("pump_maintenance_manual.pdf", "scanned_invoice.jpg", "acme_annual_report_2025.pdf")
    ]
    registry.unload()
    loads = registry.loads_so_far()

    for key in keys:
        stages.embed_stage(state, key)

    assert registry.loads_so_far() - loads == 1


def test_a_run_over_a_partition_range_materialises_every_partition_with_its_own_metadata(state):
    from colqwen_pipeline.definitions import RESOURCES
    from colqwen_pipeline.defs.assets import ASSETS

    keys = [rasterized(state, n) for n in ("pump_maintenance_manual.pdf", "scanned_invoice.jpg")]
    registry.unload()
    loads = registry.loads_so_far()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", keys)
        result = dg.materialize(
            ASSETS,
            selection=["page_images", "page_embeddings"],
            instance=instance,
            resources=RESOURCES,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["page_embeddings"]]
        assert result.success and len(instance.get_runs()) == 1

    pages = {e.partition: e.event_specific_data.materialization.metadata["pages"].value for e in events}
    assert pages == {keys[0]: 3, keys[1]: 1}
    assert registry.loads_so_far() - loads == 1
    assert all(EmbeddingArtifact.read(state.embeddings_dir / k).fingerprint for k in keys)


def test_artifact_is_fp16_with_offsets_and_memory_mapped(state):
    key = rasterized(state, "pump_maintenance_manual.pdf")

    artifact, metrics = stages.embed_stage(state, key)

    reread = EmbeddingArtifact.read(state.embeddings_dir / key)
    assert isinstance(reread.vectors, np.memmap) and reread.vectors.dtype == np.float16
    assert [p["offset"] for p in reread.pages] == list(np.cumsum([0] + [p["count"] for p in reread.pages[:-1]]))
    assert reread.fingerprint == metrics["fingerprint"] and len(reread.pages[0]["sha256"]) == 64
    assert metrics["tokens"] == len(reread.vectors) and metrics["pages_per_s"] > 0
    assert {"seconds", "batch_size_used", "device", "precision"} <= set(metrics)


def test_bench_embed_reports_throughput_for_tiny_and_4bit(state):
    from colqwen_pipeline.embedding.bench import bench_embed

    for precision in ("auto", "4bit"):
        result = bench_embed("tiny", precision=precision, batch_size=2, pages=2)
        assert {
            "model",
            "device",
            "precision",
            "batch_size",
            "visual_tokens",
            "pages",
            "pages_per_s",
            "peak_mem_mb",
        } <= set(result)
        assert result["pages_per_s"] > 0 and 0 < result["visual_tokens"] <= 768
        assert result["precision"] == ("fp32" if precision == "auto" else "4bit")


def test_bench_full_random_is_refused_on_cpu_with_a_reason(state, monkeypatch):
    from colqwen_pipeline.embedding.bench import BenchError, bench_embed

    monkeypatch.delenv("COLQWEN_BENCH_FULL_ON_CPU", raising=False)
    with pytest.raises(BenchError, match="CUDA machine"):
        bench_embed("full-random", pages=1)


def test_full_random_geometry_is_the_3b_backbone():
    """Built on the meta device: the parameter count without allocating 7.5 GB."""
    import torch
    from colpali_engine.models import ColQwen2_5

    from colqwen_pipeline.embedding.tiny import _train_tokenizer, full_random_config

    with torch.device("meta"):
        model = ColQwen2_5._from_config(full_random_config(_train_tokenizer()), dtype=torch.bfloat16)

    assert 3.7e9 < sum(p.numel() for p in model.parameters()) < 3.8e9
    assert (model.config.text_config.num_hidden_layers, model.config.vision_config.depth) == (36, 32)


def test_cuda_requested_without_a_gpu_falls_back_to_cpu_with_a_warning(caplog):
    import torch

    from colqwen_pipeline.embedding.identity import resolve_device, resolve_precision

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: there is nothing to fall back from")

    with caplog.at_level(logging.WARNING):
        device = resolve_device("cuda:0")

    assert (device, resolve_precision("auto", device)) == ("cpu", "fp32")
    assert "falling back to CPU" in caplog.text


def test_planning_on_a_host_without_a_gpu_imports_no_torch(tmp_path: Path, tiny_model_dir: Path):
    """A sensor tick, or an ingest of unchanged documents, plans against the model's identity: on a
    host with no GPU device node it must not spend seconds importing torch to learn it is on a CPU.
    With a node present (here: any existing file stands in for it) torch is asked."""
    from colqwen_pipeline.embedding.identity import GPU_DEVICE_NODES

    if any(Path(node).exists() for node in GPU_DEVICE_NODES):
        pytest.skip("this host has a GPU device node")
    probe = (
        "import sys; from colqwen_pipeline.embedding import identity; from colqwen_pipeline.settings import Settings; "
        "from colqwen_pipeline.bulk.plan import current_target\n"
        "identity.GPU_DEVICE_NODES = tuple(sys.argv[1:])\n"
        "current_target(Settings())\n"
        "print('torch' in sys.modules)"
    )
    env = os.environ | {"COLQWEN_HOME": str(tmp_path), "COLQWEN_MODEL": str(tiny_model_dir), "COLQWEN_DEVICE": "auto"}

    def plan(*nodes: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe, *nodes], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()[-1]

    assert plan(*GPU_DEVICE_NODES) == "False"
    assert plan(str(tiny_model_dir / "config.json")) == "True"  # "a GPU node exists": torch decides
