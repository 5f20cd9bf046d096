"""The model families the pipeline runs, in one table, and how a weights folder says which it is.

A family is everything that differs between models of the ColQwen kind: the colpali-engine model
and processor classes, the vector width, the vision tower's patch and merge sizes (the heatmap's
patch grid, the pixels one visual token covers), and what a weights folder's ``config.json``
(``architectures``, ``model_type``) or an adapter's base looks like. Loading, embedding and the
index are the same code for every family. ``COLQWEN_MODEL_FAMILY`` overrides the detection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colqwen_pipeline.common.errors import PipelineError


class UnknownFamily(PipelineError):
    """Weights of no family in the table, or a COLQWEN_MODEL_FAMILY that names none."""


@dataclass(frozen=True)
class ModelFamily:
    name: str  # COLQWEN_MODEL_FAMILY, part of the fingerprint
    model_class: str  # in colpali_engine.models
    processor_class: str
    dim: int  # width of the token vectors (the model's custom_text_proj)
    patch_size: int  # pixels per vision patch side
    merge_size: int  # patches merged per visual token side
    architectures: frozenset[str]  # config.json "architectures" of merged weights of this family
    base_architectures: frozenset[str]  # an adapter's base's "architectures"
    model_types: frozenset[str] = frozenset()  # config.json "model_type", when "architectures" says nothing
    # renames from published checkpoint layouts to the colpali-engine class (regex -> replacement)
    key_mapping: Mapping[str, str] = field(default_factory=dict)

    @property
    def tile(self) -> int:
        """Pixels per visual token side: one token covers a tile x tile square of the resized page."""
        return self.patch_size * self.merge_size

    def max_pixels(self, visual_tokens: int) -> int:
        """The visual-token budget as the image processor takes it: at most this many pixels per page."""
        return visual_tokens * self.tile * self.tile

    def classes(self) -> tuple[Any, Any]:
        """(model class, processor class); imports colpali-engine (seconds), so only where weights load."""
        from colqwen_pipeline.embedding.compat import ensure_torchvision

        ensure_torchvision()
        import colpali_engine.models as models

        return getattr(models, self.model_class), getattr(models, self.processor_class)

    def patch_grid(self, processor: Any, size: tuple[int, int]) -> tuple[int, int]:
        """(patches across, patches down) of a (width, height) page, merged: one stored vector each."""
        return processor.get_n_patches(size, spatial_merge_size=self.merge_size)

    def load_arguments(self, model_class: Any) -> dict[str, Any]:
        """Extra from_pretrained arguments: the published layouts' renames before the class's own."""
        if not self.key_mapping:
            return {}
        own = dict(getattr(model_class.__mro__[1], "_checkpoint_conversion_mapping", {}))
        own.update(getattr(model_class, "_checkpoint_conversion_mapping", {}))
        return {"key_mapping": dict(self.key_mapping) | own}


COLQWEN2_5 = ModelFamily(
    name="colqwen2.5",
    model_class="ColQwen2_5",
    processor_class="ColQwen2_5_Processor",
    dim=128,
    patch_size=14,
    merge_size=2,
    architectures=frozenset({"ColQwen2_5"}),
    base_architectures=frozenset({"ColQwen2_5"}),  # vidore/colqwen2.5-base under vidore/colqwen2.5-v0.2
    model_types=frozenset({"qwen2_5_vl"}),
)
# nomic-ai/colnomic-embed-multimodal-3b/-7b: the ColQwen2.5 classes, an adapter straight over a plain
# Qwen2.5-VL-Instruct (not over a ColQwen base); its own weights, so its own family and fingerprint.
COLNOMIC = ModelFamily(
    name="colnomic",
    model_class="ColQwen2_5",
    processor_class="ColQwen2_5_Processor",
    dim=128,
    patch_size=14,
    merge_size=2,
    architectures=frozenset(),  # merged, it is a ColQwen2_5 checkpoint like any other
    base_architectures=frozenset({"Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"}),
)
# TomoroAI/tomoro-colqwen3-embed-4b/-8b: Qwen3-VL backbones, 320-d vectors. The published folders
# use their own model_type ("colqwen3") and key names (vLLM's ColQwen3 loader maps the same ones);
# a folder saved by colpali-engine's ColQwen3 says "ColQwen3" / "qwen3_vl" and needs no renames.
COLQWEN3 = ModelFamily(
    name="colqwen3",
    model_class="ColQwen3",
    processor_class="ColQwen3Processor",
    dim=320,
    patch_size=16,
    merge_size=2,
    architectures=frozenset({"ColQwen3"}),
    base_architectures=frozenset({"ColQwen3", "Qwen3VLForConditionalGeneration", "Qwen3VLModel"}),
    model_types=frozenset({"colqwen3", "qwen3_vl"}),
    key_mapping={
        r"^vlm\.model\.visual": "visual",
        r"^vlm\.model\.language_model": "language_model",
        r"^embedding_proj_layer": "custom_text_proj",
    },
)
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (COLQWEN2_5, COLQWEN3, COLNOMIC)}


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise UnknownFamily(f"COLQWEN_MODEL_FAMILY={name} is not one of {', '.join(FAMILIES)} (or empty: detect it)")
    return FAMILIES[name]


ReadConfig = Callable[[str], dict[str, Any] | None]  # a file name of the weights folder -> its JSON, None if absent


def detect_family(read: ReadConfig, read_base: ReadConfig | None = None) -> ModelFamily:
    """The family of a weights folder: its config.json, or for an adapter its base's config.json
    (``read_base``). UnknownFamily names what was found and the setting that overrides it."""
    if read("adapter_config.json") is not None:
        base = read_base("config.json") if read_base else None
        if base is None:
            raise UnknownFamily("the adapter's base model has no readable config.json: set COLQWEN_MODEL_FAMILY")
        return _match(base, "base_architectures", "the adapter's base")
    config = read("config.json")
    if config is None:
        raise UnknownFamily("no config.json: set COLQWEN_MODEL_FAMILY")
    return _match(config, "architectures", "the model")


def _match(config: dict[str, Any], kind: str, what: str) -> ModelFamily:
    architectures = set(config.get("architectures") or [])
    for family in FAMILIES.values():
        if architectures & getattr(family, kind):
            return family
    if not architectures:  # only then: a plain Qwen2.5-VL says "qwen2_5_vl" too, and is no retriever
        for family in FAMILIES.values():
            if config.get("model_type") in family.model_types:
                return family
    found = f"architectures {sorted(architectures)}, model_type {config.get('model_type')!r}"
    raise UnknownFamily(
        f"{what} is of no known family ({found}): set COLQWEN_MODEL_FAMILY to one of {', '.join(FAMILIES)}"
    )


def folder_reader(directory: Path) -> ReadConfig:
    def read(name: str) -> dict[str, Any] | None:
        path = directory / name
        return json.loads(path.read_text()) if path.is_file() else None

    return read
