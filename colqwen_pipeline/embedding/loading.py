"""Read the weights ``identity.identify`` named: the model and processor classes of its family, on
their device and precision (an adapter over its base, quantised when asked), with the family's
visual-token budget."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from colqwen_pipeline.embedding.identity import (
    PROCESSOR_FILES,
    ModelIdentity,
    ModelLoadError,
    ModelSpec,
    hub_offline,
    identify,
)

log = logging.getLogger(__name__)


def _patched_adapter_dir(adapter: Path, base: str, scratch: Path) -> Path:
    """A view of ``adapter`` whose adapter_config points at ``base`` (offline base override)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    key = hashlib.sha256(f"{adapter.resolve()}|{base}".encode()).hexdigest()[:12]
    view = scratch / f"adapter-{key}"
    view.mkdir(parents=True, exist_ok=True)
    for item in adapter.iterdir():
        link = view / item.name
        if item.name != "adapter_config.json" and not link.exists():
            link.symlink_to(item.resolve())
    (view / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return view


def _dtype_arguments(precision: str, device: str) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    if precision == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        return {"quantization_config": config, "dtype": torch.bfloat16}
    if precision == "8bit":
        # the modules bitsandbytes leaves unquantised: bf16 on a GPU, fp32 on CPU (its int8 path casts anyway)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": dtype}
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    if precision not in dtypes:
        raise ModelLoadError(f"COLQWEN_PRECISION={precision} is not one of auto, bf16, fp32, 4bit, 8bit")
    return {"dtype": dtypes[precision]}


def _processor_source(identity: ModelIdentity) -> str:
    """An adapter directory may lack the processor files; its base has them."""
    for candidate in (identity.load_from, identity.base_model):
        if candidate and any((Path(candidate) / name).exists() for name in PROCESSOR_FILES):
            return candidate
    return identity.load_from


def enable_tf32() -> None:
    import torch

    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+; no effect on bf16 compute
    torch.backends.cudnn.allow_tf32 = True


def load_model(spec: ModelSpec, scratch: Path) -> tuple[Any, Any, ModelIdentity]:
    """Load (model, processor, identity). ``scratch`` holds adapter views for base overrides."""
    identity = identify(spec)
    family = identity.model_family
    model_class, processor_class = family.classes()
    if identity.precision in {"4bit", "8bit"} and not identity.device.startswith("cuda"):
        log.warning("%s quantisation on CPU works but is slow; use a GPU for real throughput", identity.precision)
    if identity.device.startswith("cuda"):
        enable_tf32()
    load_from = identity.load_from
    if identity.base_model:  # always through a view, so no hub id is ever looked up for a local adapter
        load_from = str(_patched_adapter_dir(Path(identity.load_from), identity.base_model, scratch))
    offline = identity.local or hub_offline()
    try:
        model = model_class.from_pretrained(
            load_from,
            device_map=identity.device,
            attn_implementation=identity.attention,
            local_files_only=offline,
            **_dtype_arguments(identity.precision, identity.device),
            **family.load_arguments(model_class),
        ).eval()
        processor = processor_class.from_pretrained(_processor_source(identity), local_files_only=offline)
        apply_visual_token_budget(processor, family.max_pixels(spec.max_visual_tokens))
    except Exception as error:  # OSError, ValueError, SafetensorError, KeyError...: all mean broken weights
        if isinstance(error, ModelLoadError):
            raise
        hint = "check COLQWEN_BASE_MODEL and COLQWEN_MODEL" if identity.base_model else "check COLQWEN_MODEL"
        if "out of memory" in str(error).lower():
            hint = "not enough device memory: try COLQWEN_PRECISION=4bit or another COLQWEN_DEVICE"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load model from {identity.model}: {first_line} ({hint})") from error
    if int(model.dim) != identity.dim:
        raise ModelLoadError(
            f"{identity.model} produces {model.dim}-d vectors, but family {identity.family} has {identity.dim}: "
            "check COLQWEN_MODEL_FAMILY"
        )
    return model, processor, identity


def apply_visual_token_budget(processor: Any, max_pixels: int) -> None:
    """At most ``max_pixels`` per page (the family's tile squared per visual token), set here rather than
    through colpali's ``max_num_visual_tokens``, whose ColQwen2.5 processor assumes 28-px tiles."""
    processor.image_processor.max_pixels = max_pixels
    processor.image_processor.size["longest_edge"] = max_pixels
