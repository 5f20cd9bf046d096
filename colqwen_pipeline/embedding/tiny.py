"""Build a tiny, randomly initialised ColQwen2.5 offline.

It uses the real classes and the real on-disk layout, so ``ColQwen2_5.from_pretrained(dir)``
loads it exactly like the published model: tests and the demo exercise the production loading
and embedding code without downloading 7 GB of weights. Its scores are meaningless.

``full_random_config`` gives the published Qwen2.5-VL-3B geometry with random weights, which
costs exactly what the real model costs per page (used by ``bench embed --model full-random``).
"""

from __future__ import annotations

import json
from pathlib import Path

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
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def _config(tokenizer, text: dict, vision: dict):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer)}
        | text
        | {
            "tie_word_embeddings": True,
            "bos_token_id": None,
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


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


def build_processor(tokenizer):
    from colqwen_pipeline.embedding.compat import ensure_torchvision

    ensure_torchvision()
    from colpali_engine.models import ColQwen2_5_Processor
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return ColQwen2_5_Processor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write the tiny model to ``directory`` (~2.4 MB) and return it. Deterministic per seed."""
    return build_random_model(directory, tiny_config, seed=seed)


def build_random_model(
    directory: Path, geometry=tiny_config, seed: int = 0, dtype: str = "fp32", device: str = "cpu"
) -> Path:
    """A random-weight ColQwen2.5 of the given geometry, saved like the published one.

    ``full_random_config`` in bf16 on a GPU is how throughput is measured without the weights
    (~7.5 GB written once); in fp32 on a CPU it needs ~15 GB of RAM, so callers keep it off CPUs.
    """
    from colqwen_pipeline.embedding.compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from colpali_engine.models import ColQwen2_5

    directory = Path(directory)
    tokenizer = _train_tokenizer()
    processor = build_processor(tokenizer)
    torch.manual_seed(seed)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    with torch.device(device):
        model = ColQwen2_5._from_config(geometry(tokenizer), dtype=torch_dtype).eval()
    tmp = directory.with_name(directory.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    del model
    marker = {"random_weights": True, "seed": seed, "geometry": geometry.__name__, "dtype": dtype}
    (tmp / TINY_MARKER).write_text(json.dumps(marker))
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def is_tiny_model(directory: str | Path) -> bool:
    return (Path(directory) / TINY_MARKER).is_file()
