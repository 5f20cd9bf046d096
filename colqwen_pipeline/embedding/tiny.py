"""Build a tiny, randomly initialised model of each family offline.

It uses the family's real classes and the real on-disk layout, so ``ColQwen2_5.from_pretrained(dir)``
(``ColQwen3``, ...) loads it exactly like the published model: tests and the demo exercise the
production loading and embedding code without downloading gigabytes of weights. Its scores are
meaningless. colnomic is an adapter over a plain Qwen2.5-VL base, so its tiny model is one too
(the base in ``DIR/base``).

``full_random_config`` gives the published Qwen2.5-VL-3B geometry with random weights, and
``full_random_qwen3_config`` the Qwen3-VL-4B one (ColQwen3-4B): each costs exactly what the real
model costs per page (``bench embed --model full-random``, the GPU check).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colqwen_pipeline.embedding.families import COLNOMIC, COLQWEN2_5, COLQWEN3, FAMILIES, ModelFamily

TINY_MARKER = "colqwen_pipeline_tiny_model.json"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_CORPUS = """
Annual report revenue grew twelve percent while operating costs fell. The balance sheet shows
assets, liabilities and equity. Quarterly results table: Q1 Q2 Q3 Q4 net income margin.
Technical manual: install the pump, tighten the valve, check pressure, replace the filter.
Safety warning: disconnect power before maintenance. Figure 3 shows the wiring diagram.
Invoice number, date, customer, amount due, tax, total. Describe the image. What is shown?
The quick brown fox jumps over the lazy dog 0123456789 % $ , . ; : ( ) - + = / ? !
"""


def _train_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,  # type: ignore[arg-type]  # pairs, as tokenizers' own BPE state holds them
        unk_token=None,  # type: ignore[arg-type]  # byte-level BPE has no unknown token
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text(tokenizer, text: dict) -> dict:
    ids = _token_ids(tokenizer)
    return (
        {"vocab_size": len(tokenizer)}
        | text
        | {
            "tie_word_embeddings": True,
            "bos_token_id": None,
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
    )


def _vision_tokens(tokenizer) -> dict:
    ids = _token_ids(tokenizer)
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


def _config(tokenizer, text: dict, vision: dict):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=_text(tokenizer, text), vision_config=vision, **_vision_tokens(tokenizer))


def _qwen3_config(tokenizer, text: dict, vision: dict):
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(text_config=_text(tokenizer, text), vision_config=vision, **_vision_tokens(tokenizer))


def tiny_config(tokenizer):
    text = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        # mrope sections must sum to head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": 128,
        "fullatt_block_indexes": [1],
    }
    return _config(tokenizer, text, vision)


def full_random_config(tokenizer):
    """The published Qwen2.5-VL-3B geometry (ColQwen2.5's backbone)."""
    text = {
        "vocab_size": 151936,  # the tiny tokenizer uses the first ids only; the table's memory is real
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "max_position_embeddings": 128000,
        "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    }
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "out_hidden_size": 2048,
    }
    return _config(tokenizer, text, vision)


def tiny_qwen3_config(tokenizer):
    """A 2-layer Qwen3-VL (128 wide) with a 2-block vision tower and one deepstack feature."""
    text = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [4, 6, 6],  # sums to head_dim / 2
            "mrope_interleaved": True,
        },
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": COLQWEN3.patch_size,
        "spatial_merge_size": COLQWEN3.merge_size,
        "out_hidden_size": 128,
        "num_position_embeddings": 256,  # a 16 x 16 grid of learnt positions, interpolated
        "deepstack_visual_indexes": [0],
    }
    return _qwen3_config(tokenizer, text, vision)


def full_random_qwen3_config(tokenizer):
    """The published Qwen3-VL-4B geometry (the backbone of TomoroAI/tomoro-colqwen3-embed-4b)."""
    text = {
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "hidden_act": "silu",
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    }
    vision = {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2560,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
        "hidden_act": "gelu_pytorch_tanh",
    }
    return _qwen3_config(tokenizer, text, vision)


@dataclass(frozen=True)
class Geometry:
    """A random-weight model to build: its family, its transformers config, and whether it is
    laid out as an adapter over a plain backbone (colnomic) or as merged weights."""

    name: str
    family: ModelFamily
    config: Callable[[Any], Any]  # tokenizer -> transformers config
    adapter: bool = False


TINY = {
    COLQWEN2_5.name: Geometry("tiny", COLQWEN2_5, tiny_config),
    COLQWEN3.name: Geometry("tiny", COLQWEN3, tiny_qwen3_config),
    COLNOMIC.name: Geometry("tiny", COLNOMIC, tiny_config, adapter=True),
}
FULL_RANDOM = {
    COLQWEN2_5.name: Geometry("full-random", COLQWEN2_5, full_random_config),
    COLQWEN3.name: Geometry("full-random", COLQWEN3, full_random_qwen3_config),
}


def build_processor(tokenizer, family: ModelFamily = COLQWEN2_5):
    """The family's processor over the tiny tokenizer, with the published image pre-processing."""
    _, processor_class = family.classes()  # first: it makes torchvision importable
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

    if family is COLQWEN3:  # Qwen3-VL: 16-px patches, mean/std 0.5, its own video processor
        half = [0.5, 0.5, 0.5]
        image = Qwen2VLImageProcessor(patch_size=16, merge_size=2, image_mean=half, image_std=half)
        return processor_class(image_processor=image, tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor())
    return processor_class(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )


def build_tiny_model(directory: Path, seed: int = 0, family: str = COLQWEN2_5.name) -> Path:
    """Write the family's tiny model to ``directory`` (~2.4 MB) and return it. Deterministic per seed."""
    return build_random_model(directory, TINY[family], seed=seed)


def build_random_model(
    directory: Path, geometry: Geometry = TINY[COLQWEN2_5.name], seed: int = 0, dtype: str = "fp32", device: str = "cpu"
) -> Path:
    """A random-weight model of the given geometry, saved like the published one (atomically).

    A full-random geometry in bf16 on a GPU is how throughput is measured without the weights
    (~7.5 GB for ColQwen2.5-3B, ~8.9 GB for ColQwen3-4B, written once); in fp32 on a CPU it needs
    twice that in RAM, so callers keep it off CPUs.
    """
    import torch

    directory = Path(directory)
    tokenizer = _train_tokenizer()
    processor = build_processor(tokenizer, geometry.family)
    torch.manual_seed(seed)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_class, _ = geometry.family.classes()
    with torch.device(device):
        if geometry.adapter:
            model = _adapter_over_plain_base(model_class, geometry, tokenizer, tmp / "base", torch_dtype)
            processor.save_pretrained(tmp / "base")
        else:
            model = model_class._from_config(geometry.config(tokenizer), dtype=torch_dtype).eval()
        model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    del model
    marker = {"random_weights": True, "seed": seed, "geometry": geometry.name, "family": geometry.family.name}
    (tmp / TINY_MARKER).write_text(json.dumps(marker | {"dtype": dtype}))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    if geometry.adapter:  # the adapter names its base by path: the final one
        _point_adapter_at(directory, directory / "base")
    return directory


def _adapter_over_plain_base(model_class, geometry: Geometry, tokenizer, base_dir: Path, dtype) -> Any:
    """colnomic's layout: a plain Qwen2.5-VL saved as the base, and a LoRA adapter of the ColQwen
    class over it (q/v LoRA, custom_text_proj saved in full), as nomic publishes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    plain = Qwen2_5_VLForConditionalGeneration._from_config(geometry.config(tokenizer), dtype=dtype).eval()
    plain.save_pretrained(base_dir)
    del plain
    model = model_class.from_pretrained(base_dir, dtype=dtype)  # custom_text_proj: random, like the rest
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["custom_text_proj"])
    config.init_lora_weights = False  # random LoRA weights: the adapter changes the vectors
    return get_peft_model(model, config)


def _point_adapter_at(adapter: Path, base: Path) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base.resolve())
    path.write_text(json.dumps(config, indent=1))


def tiny_family(directory: str | Path) -> str | None:
    """The family a tiny model was built as (None: not a tiny model)."""
    marker = Path(directory) / TINY_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("family", COLQWEN2_5.name)


def is_tiny_model(directory: str | Path) -> bool:
    return (Path(directory) / TINY_MARKER).is_file()


__all__ = ["FAMILIES", "FULL_RANDOM", "TINY", "Geometry", "build_random_model", "build_tiny_model", "is_tiny_model"]
