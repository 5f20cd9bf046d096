"""Weights in memory of each model family at each precision, measured on a CPU (README, "Choosing a model").

The published geometries do not fit a shared 24 GB CPU machine in fp32, so each is measured in slices
of its real widths (full vocabulary, hidden sizes, vision tower) with few layers: three random-weight
models per family, (1 text layer, 3 vision blocks), (2, 3) and (1, 4), built in bf16 and loaded through
the pipeline's own loader at fp32, bf16, 8bit and 4bit. ``model.get_memory_footprint()`` (parameters
and buffers as stored, quantised ones included) of the three gives the cost of the rest, of one text
layer and of one vision block exactly, and so the footprint at the published depth. Activations come
on top (docs/benchmarks.md, the GPU check). Prints one JSON object.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_model_memory.py [--families colqwen3,...] [--work DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "8bit", "4bit")
SLICES = ((1, 3), (2, 3), (1, 4))  # (text layers, vision blocks): 3 blocks hold Qwen3-VL's 3 deepstack taps


def full_random_7b_config(tokenizer):
    """Qwen2.5-VL-7B, the backbone of nomic-ai/colnomic-embed-multimodal-7b (memory only)."""
    from colqwen_pipeline.embedding.tiny import full_random_config

    config = full_random_config(tokenizer)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 3584, 18944, 28
    text.num_attention_heads, text.num_key_value_heads, text.vocab_size = 28, 4, 152064
    config.vision_config.out_hidden_size = 3584
    return config


def geometries() -> dict[str, Any]:
    from colqwen_pipeline.embedding.families import COLNOMIC, COLQWEN2_5, COLQWEN3
    from colqwen_pipeline.embedding.tiny import full_random_config, full_random_qwen3_config

    return {
        "colqwen2.5-3b": (COLQWEN2_5, full_random_config),
        "colqwen3-4b": (COLQWEN3, full_random_qwen3_config),
        "colnomic-7b": (COLNOMIC, full_random_7b_config),
    }


def sliced(config: Any, text_layers: int, vision_blocks: int) -> Any:
    config = copy.deepcopy(config)
    config.text_config.num_hidden_layers = text_layers
    if getattr(config.text_config, "layer_types", None):
        config.text_config.layer_types = config.text_config.layer_types[:text_layers]
    vision = config.vision_config
    vision.depth = vision_blocks
    if hasattr(vision, "fullatt_block_indexes"):
        vision.fullatt_block_indexes = [vision_blocks - 1]
    if hasattr(vision, "deepstack_visual_indexes"):
        vision.deepstack_visual_indexes = list(range(len(vision.deepstack_visual_indexes)))
    return config


def footprints(directory: Path, views: Path) -> dict[str, int]:
    import gc

    from colqwen_pipeline.embedding.identity import ModelSpec
    from colqwen_pipeline.embedding.loading import load_model

    found = {}
    for precision in PRECISIONS:
        model, _, _ = load_model(ModelSpec(str(directory), device="cpu", precision=precision), views)
        found[precision] = int(model.get_memory_footprint())
        del model
        gc.collect()
    return found


def measure(name: str, work: Path) -> dict[str, Any]:
    from colqwen_pipeline.embedding.tiny import Geometry, _train_tokenizer, build_random_model

    family, geometry = geometries()[name]
    tokenizer = _train_tokenizer()
    full = geometry(tokenizer)
    measured = {}
    for text_layers, vision_blocks in SLICES:
        config = sliced(full, text_layers, vision_blocks)
        directory = work / f"{name}-{text_layers}-{vision_blocks}"
        build_random_model(directory, Geometry("slice", family, lambda _t, c=config: c), dtype="bf16")
        measured[(text_layers, vision_blocks)] = footprints(directory, work / "views")
        shutil.rmtree(directory)
    depth = (full.text_config.num_hidden_layers, full.vision_config.depth)
    result: dict[str, Any] = {"family": family.name, "text_layers": depth[0], "vision_blocks": depth[1]}
    for precision in PRECISIONS:
        base, more_text, more_vision = (measured[s][precision] for s in SLICES)
        per_text, per_vision = more_text - base, more_vision - base
        rest = base - per_text - 3 * per_vision
        total = rest + depth[0] * per_text + depth[1] * per_vision
        result[precision] = {"weights_gib": round(total / 2**30, 2), "per_text_layer_mib": round(per_text / 2**20, 1)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ",".join(geometries())
    parser.add_argument("--families", default=names, help=f"comma-separated, of {names}")
    parser.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="model-memory-"))
    started = time.perf_counter()
    report = {name: measure(name, work) for name in args.families.split(",")}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["how"] = "get_memory_footprint() of 3 depth slices at full width, extrapolated linearly to full depth"
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
