"""Model families with the real colpali-engine classes and a random-weight tiny model of each:
detection from the weights folder (and COLQWEN_MODEL_FAMILY), the family in the fingerprint, each
family's vectors and patch grid, the published ColQwen3 layout, the same ingest / search / evaluate /
heatmap flow for every family, and a move from ColQwen2.5 to ColQwen3 that switches search only once
the new collection is complete (search never empty meanwhile)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from colqwen_pipeline.bulk import stages
from colqwen_pipeline.embedding import registry
from colqwen_pipeline.embedding.embedder import LocalEmbedder
from colqwen_pipeline.embedding.families import FAMILIES
from colqwen_pipeline.embedding.identity import ModelLoadError, ModelSpec, identify
from colqwen_pipeline.embedding.loading import load_model
from colqwen_pipeline.inbox import document_key
from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import REPO, SAMPLES, add_sample

SAMPLE = "pump_maintenance_manual.pdf"  # 3 pages
OTHER = "scanned_invoice.jpg"


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random-weight model per family, built once per module (ColQwen2.5: the session's)."""
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("families")
    built = {name: build_tiny_model(root / f"tiny-{name}", family=name) for name in FAMILIES if name != "colqwen2.5"}
    return {"colqwen2.5": tiny_model_dir} | built


@pytest.fixture(scope="module")
def letter_page() -> Image.Image:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(SAMPLES / SAMPLE)
    image = pdf[0].render(scale=150 / 72).to_pil()  # 1275 x 1650: a letter page at 150 DPI
    pdf.close()
    return image


def load(source: Path, tmp_path: Path, **spec) -> LocalEmbedder:
    model, processor, identity = load_model(ModelSpec(str(source), device="cpu", precision="fp32", **spec), tmp_path)
    return LocalEmbedder(model, processor, identity)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_told_from_its_weights_and_named_in_the_fingerprint(family, tiny_models):
    identity = identify(ModelSpec(str(tiny_models[family]), device="cpu", precision="fp32"))

    assert identity.family == family
    assert identity.dim == FAMILIES[family].dim
    assert f"/{family}/d{identity.dim}/fp32/vt768" in identity.fingerprint


def test_colnomic_is_an_adapter_over_a_plain_qwen2_5_vl(tiny_models):
    """What tells colnomic from ColQwen2.5 (same classes): its adapter's base is no ColQwen checkpoint."""
    adapter = tiny_models["colnomic"]
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert json.loads((Path(base) / "config.json").read_text())["architectures"] == [
        "Qwen2_5_VLForConditionalGeneration"
    ]
    assert identify(ModelSpec(str(adapter))).base_model == base


def test_the_family_setting_overrides_detection_and_changes_the_fingerprint(tiny_models):
    detected = identify(ModelSpec(str(tiny_models["colqwen2.5"])))
    forced = identify(ModelSpec(str(tiny_models["colqwen2.5"]), family="colnomic"))

    assert (detected.family, forced.family) == ("colqwen2.5", "colnomic")
    assert forced.fingerprint != detected.fingerprint  # never one cache entry or collection for both
    with pytest.raises(ModelLoadError, match="COLQWEN_MODEL_FAMILY=colqwen9 is not one of colqwen2.5, colqwen3"):
        identify(ModelSpec(str(tiny_models["colqwen2.5"]), family="colqwen9"))


def test_weights_of_no_known_family_are_refused_naming_the_setting(tiny_models, tmp_path):
    plain = shutil.copytree(tiny_models["colnomic"] / "base", tmp_path / "qwen2.5-vl-instruct")  # no retrieval head

    with pytest.raises(ModelLoadError, match=r"Qwen2_5_VLForConditionalGeneration.*set COLQWEN_MODEL_FAMILY"):
        identify(ModelSpec(str(plain)))


def test_a_wrong_family_override_is_caught_by_the_width_of_the_loaded_model(tiny_models, tmp_path):
    """COLQWEN_MODEL_FAMILY=colqwen3 over ColQwen2.5 weights: the ColQwen3 classes refuse them."""
    with pytest.raises(ModelLoadError, match="cannot load model from"):
        load(tiny_models["colqwen2.5"], tmp_path, family="colqwen3")


def test_colqwen3_gives_320_d_vectors_on_its_own_32_pixel_grid(tiny_models, tmp_path, letter_page):
    from colqwen_pipeline.service import heatmap

    embedder = load(tiny_models["colqwen3"], tmp_path)

    vectors = embedder.embed_images([letter_page])[0]

    assert vectors.shape[1] == 320 and embedder.dim == 320
    size = letter_page.size
    assert embedder.patch_grid(size) == (24, 31)  # 1275 x 1650 fitted to 768 tokens of 32 x 32 pixels
    grid = heatmap.patch_grid(embedder.patch_grid(size), size, len(vectors), heatmap.prompt_tokens(embedder.processor))
    assert grid.n_x * grid.n_y == embedder.visual_tokens(letter_page) == 744 <= 768
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    _, rows, columns = embedder.processor.process_images([letter_page])["image_grid_thw"][0].tolist()
    assert (columns * 16, rows * 16) == (768, 992)  # what the model saw: 16-px patches, merged 2 x 2
    assert embedder.embed_queries(["replace the filter"])[0].shape[1] == 320


def tomoro_layout(source: Path, destination: Path) -> Path:
    """The tiny ColQwen3 rewritten as the published TomoroAI folders name things: model_type
    "colqwen3" with embed_dim, and weights under vlm.model.* with the head as embedding_proj_layer
    (the names vLLM's ColQwen3 loader maps). Built here: no hub on these machines."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, destination)
    renames = {"model.custom_text_proj.": "embedding_proj_layer.", "model.": "vlm.model."}
    weights = load_file(source / "model.safetensors")
    renamed = {}
    for key, tensor in weights.items():
        prefix = next(p for p in renames if key.startswith(p))
        renamed[renames[prefix] + key[len(prefix) :]] = tensor
    assert any(k.startswith("vlm.model.visual.") for k in renamed) and "embedding_proj_layer.weight" in renamed
    save_file(renamed, destination / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text()) | {"model_type": "colqwen3", "embed_dim": 320}
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def test_the_published_colqwen3_layout_loads_to_the_same_vectors(tiny_models, tmp_path, letter_page):
    tomoro = tomoro_layout(tiny_models["colqwen3"], tmp_path / "tomoro-colqwen3-embed-tiny")

    published = load(tomoro, tmp_path)

    assert published.identity.family == "colqwen3"
    expected = load(tiny_models["colqwen3"], tmp_path).embed_images([letter_page])[0]
    assert np.array_equal(published.embed_images([letter_page])[0], expected)  # every weight found under its name


def test_build_tiny_model_command_writes_the_family_asked_for(tmp_path, capsys):
    from colqwen_pipeline.cli import main

    assert main(["build-tiny-model", "--family", "colqwen3", str(tmp_path / "tiny3")]) == 0

    assert "colqwen3" in capsys.readouterr().out
    assert json.loads((tmp_path / "tiny3" / "config.json").read_text())["architectures"] == ["ColQwen3"]
    assert identify(ModelSpec(str(tmp_path / "tiny3"))).family == "colqwen3"


# -- the same flow for every family -------------------------------------------------------------------


def family_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Path) -> Settings:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    for name, value in {
        "COLQWEN_HOME": tmp_path / "var",
        "COLQWEN_INBOX": inbox,
        "COLQWEN_MODEL": model,
        "COLQWEN_EVAL_SET": REPO / "data" / "eval" / "queries.jsonl",
    }.items():
        monkeypatch.setenv(name, str(value))
    for name in ("COLQWEN_REDIS_URL", "COLQWEN_MILVUS_URI", "COLQWEN_MODEL_FAMILY", "COLQWEN_MODEL_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    return Settings()


@contextlib.contextmanager
def serving(settings: Settings):
    from colqwen_pipeline.service.app import create_app
    from colqwen_pipeline_tests.test_server import server_in_thread, wait_ready

    with server_in_thread(create_app(settings)) as url:
        wait_ready(url)
        yield url


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_ingests_searches_evaluates_and_draws_a_heatmap(family, tiny_models, tmp_path, monkeypatch):
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
    from colqwen_pipeline.evaluation.collection import evaluate

    settings = family_state(tmp_path, monkeypatch, tiny_models[family])
    add_sample(settings, SAMPLE)
    key = document_key(SAMPLE)

    report = run_documents(settings, [key], say=lambda _: None)
    hits = stages.search("replace the filter cartridge", top_k=3, settings=settings)
    evaluation = evaluate(settings)

    assert report.failed == {} and report.pages == 3
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / key)
    assert artifact.dim == FAMILIES[family].dim and f"/{family}/" in artifact.fingerprint
    assert sorted(hit.page for hit in hits) == [1, 2, 3]
    assert evaluation.results and all(result.hits for result in evaluation.results)  # the pump queries, answered
    with serving(settings) as url:
        info = httpx.get(f"{url}/info").json()["model"]
        painted = httpx.get(f"{url}/pages/{key}/2/heatmap", params={"q": "pump pressure", "width": 300}, timeout=60)
    assert (info["family"], info["dim"]) == (family, FAMILIES[family].dim)
    assert painted.status_code == 200, painted.text  # the family's grid fits the stored vectors of page 2
    heat = np.asarray(Image.open(io.BytesIO(painted.content)).convert("RGB"), dtype=float)
    assert (heat[..., 0] - heat[..., 2]).max() > 100  # the strongest patch painted red


# -- from one family to another ---------------------------------------------------------------------


def search_json(query: str, capsys) -> dict:
    from colqwen_pipeline.cli import main

    capsys.readouterr()
    assert main(["search", "--json", "--top-k", "10", query]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # three ingests across two model families
def test_moving_from_colqwen2_5_to_colqwen3_switches_search_only_when_the_rebuild_is_complete(
    tiny_models, tmp_path, monkeypatch, instance, capsys
):
    """The inbox is re-embedded by ColQwen3 one document per run: until both are in the 320-d collection,
    search (configured for ColQwen3) is scored by ColQwen2.5 against the complete 128-d collection."""
    from colqwen_pipeline.defs.runner import ingest

    old = family_state(tmp_path, monkeypatch, tiny_models["colqwen2.5"])
    add_sample(old, SAMPLE)
    add_sample(old, OTHER)
    assert ingest(old, instance=instance, echo=lambda _: None).failed == {}
    before = search_json("pump pressure", capsys)
    assert (before["model"]["family"], before["model"]["dim"], len(before["results"])) == ("colqwen2.5", 128, 4)

    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_models["colqwen3"]))
    monkeypatch.setenv("COLQWEN_MAX_DOCUMENTS_PER_RUN", "1")
    new = Settings()
    ingest(new, [str(new.inbox / SAMPLE)], instance=instance, echo=lambda _: None)

    during = search_json("pump pressure", capsys)
    index = stages.make_index(new)
    configured = registry.model_identity(new).fingerprint
    assert "/colqwen3/d320/" in configured and index.live_fingerprint() == before["model"]["fingerprint"]
    assert index.rebuild_target(configured).document_ids() == {document_key(SAMPLE)}  # half of the rebuild
    assert during["model"] == before["model"] and len(during["results"]) == 4  # the old, complete collection

    assert ingest(new, instance=instance, echo=lambda _: None).failed == {}

    after = search_json("pump pressure", capsys)
    assert (after["model"]["family"], after["model"]["dim"]) == ("colqwen3", 320)
    assert after["model"]["fingerprint"] == configured and len(after["results"]) == 4
    with index.client() as client:  # the ColQwen2.5 collection is kept, never dropped implicitly
        kept = index.rebuild_target(before["model"]["fingerprint"]).collection_info(client)
    assert (kept["fingerprint"], kept["dim"]) == (before["model"]["fingerprint"], 128)


def test_a_live_collection_of_a_model_never_seen_here_is_refused_not_searched_with_another(
    tiny_models, tmp_path, monkeypatch
):
    from colqwen_pipeline.bulk.engine import run_documents

    old = family_state(tmp_path, monkeypatch, tiny_models["colqwen2.5"])
    add_sample(old, SAMPLE)
    assert run_documents(old, [document_key(SAMPLE)], say=lambda _: None).failed == {}
    (old.home_dir / "models" / registry.KNOWN_MODELS).unlink()  # as if written from another machine
    registry.forget_identities()  # this process must not remember it either
    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_models["colqwen3"]))

    with pytest.raises(ModelLoadError, match=r"holds vectors of tiny-colqwen2\.5@.*set COLQWEN_MODEL to it"):
        stages.search("pump", settings=Settings())


def test_a_model_directory_holding_other_weights_now_is_refused_for_the_live_collection(
    tiny_models, tmp_path, monkeypatch
):
    """known.json points at a folder; if its weights changed since, it no longer makes the live vectors."""
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.embedding.tiny import build_tiny_model

    model = shutil.copytree(tiny_models["colqwen2.5"], tmp_path / "model")
    old = family_state(tmp_path, monkeypatch, model)
    add_sample(old, SAMPLE)
    assert run_documents(old, [document_key(SAMPLE)], say=lambda _: None).failed == {}
    build_tiny_model(model, seed=7)  # other weights in the same folder
    registry.forget_identities()
    monkeypatch.setenv("COLQWEN_MODEL", str(tiny_models["colqwen3"]))

    with pytest.raises(ModelLoadError, match="is now another model: complete the rebuild"):
        stages.search("pump", settings=Settings())


def test_tiny_models_of_each_family_live_apart_under_the_state_directory(tmp_path, monkeypatch):
    """With no COLQWEN_MODEL, COLQWEN_MODEL_FAMILY picks which tiny model is built and used."""
    monkeypatch.delenv("COLQWEN_MODEL", raising=False)
    monkeypatch.setenv("COLQWEN_MODEL_FAMILY", "colqwen3")
    settings = Settings(home=tmp_path / "var")

    identity = registry.model_identity(settings)

    assert settings.tiny_model_dir.name == "tiny-colqwen3" and identity.family == "colqwen3"


def test_full_random_colqwen3_geometry_is_the_4b_backbone():
    """Built on the meta device: the parameter count of Qwen3-VL-4B plus the 320-d head, without 8.9 GB."""
    import torch
    from colpali_engine.models import ColQwen3

    from colqwen_pipeline.embedding.tiny import FULL_RANDOM, _train_tokenizer

    with torch.device("meta"):
        model = ColQwen3._from_config(FULL_RANDOM["colqwen3"].config(_train_tokenizer()), dtype=torch.bfloat16)

    assert 4.4e9 < sum(p.numel() for p in model.parameters()) < 4.5e9
    assert (model.config.text_config.num_hidden_layers, model.config.vision_config.depth, model.dim) == (36, 24, 320)


def test_a_collection_written_before_families_is_still_searched_by_its_model(tiny_models, tmp_path, monkeypatch):
    """Fingerprints gained the family and width: an index written before is the same model's vectors,
    served (not refused as an unknown model) until the next ingest rebuilds it under the new name."""
    from colqwen_pipeline.bulk.engine import run_documents
    from colqwen_pipeline.embedding.artifact import EmbeddingArtifact
    from colqwen_pipeline.embedding.identity import legacy_fingerprint
    from colqwen_pipeline.index.base import PageRows

    settings = family_state(tmp_path, monkeypatch, tiny_models["colqwen2.5"])
    add_sample(settings, SAMPLE)
    key = document_key(SAMPLE)
    assert run_documents(settings, [key], until="embeddings", say=lambda _: None).failed == {}
    artifact = EmbeddingArtifact.read(settings.embeddings_dir / key)
    pages = [
        PageRows(p["page"], p["sha256"], artifact.page_vectors(i), p["image"]) for i, p in enumerate(artifact.pages)
    ]
    old = legacy_fingerprint(registry.model_identity(settings))
    assert old == artifact.fingerprint.replace("/colqwen2.5/d128/", "/")
    index = stages.make_index(settings)
    index.replace_document(key, SAMPLE, pages, old, 128)

    hits = stages.search("replace the filter cartridge", top_k=3, settings=settings)

    assert index.live_fingerprint() == old and sorted(h.page for h in hits) == [1, 2, 3]
