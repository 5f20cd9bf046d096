"""Load ColQwen2.5 the way users have it: a local model directory, a LoRA adapter directory
over a local base, or a hub id when online. Records a fingerprint that names exactly which
weights, precision and visual-token cap produced an embedding (the cache and index key on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colqwen_pipeline.embedding.tiny import is_tiny_model

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """Missing or broken weights; the message says what to set."""


@dataclass(frozen=True)
class ModelSpec:
    source: str  # local directory or hub id
    base_model: str = ""  # local base directory overriding an adapter's base_model_name_or_path
    device: str = "auto"
    precision: str = "auto"  # auto, bf16, fp32, 4bit, 8bit
    max_visual_tokens: int = 768


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("COLQWEN_DEVICE=%s but CUDA is not available: falling back to CPU (slow)", requested)
        return "cpu"
    return requested


def resolve_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return requested


def _weights_revision(directory: Path) -> str:
    """Cheap content revision of a local model: config files in full, weights by header + edges.

    Hashing 7 GB of weights on every start would cost seconds; a safetensors header plus the
    first and last MiB of tensor data tells different checkpoints apart.
    """
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix == ".json":
            digest.update(path.name.encode() + path.read_bytes())
        elif path.suffix in {".safetensors", ".bin"}:
            size = path.stat().st_size
            with path.open("rb") as handle:
                digest.update(f"{path.name}:{size}".encode() + handle.read(1 << 20))
                handle.seek(max(0, size - (1 << 20)))
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def _hub_revision(source: str) -> str:
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(source).sha or "unknown"
    except Exception:  # offline or unknown: the id alone still separates models
        return "unknown"


def fingerprint(spec: ModelSpec, revision: str, precision: str) -> str:
    name = Path(spec.source).name if Path(spec.source).exists() else spec.source
    return f"{name}@{revision[:12]}/{precision}/vt{spec.max_visual_tokens}"


def _patched_adapter_dir(adapter: Path, base: str, scratch: Path) -> Path:
    """A view of ``adapter`` whose adapter_config points at ``base`` (offline base override)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(Path(base).resolve()) if Path(base).exists() else base
    key = hashlib.sha256(f"{adapter.resolve()}|{config['base_model_name_or_path']}".encode()).hexdigest()[:12]
    view = scratch / f"adapter-{key}"
    view.mkdir(parents=True, exist_ok=True)
    for item in adapter.iterdir():
        link = view / item.name
        if item.name != "adapter_config.json" and not link.exists():
            link.symlink_to(item.resolve())
    (view / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return view


def _quantization(precision: str) -> dict[str, Any]:
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
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"dtype": {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[precision]}


def _attention(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _processor_source(local: Path | None, base_model: str, load_from: str) -> str:
    """An adapter directory may lack the processor files; its base has them."""
    for candidate in (local, Path(base_model) if base_model else None):
        if candidate and any((candidate / name).exists() for name in PROCESSOR_FILES):
            return str(candidate)
    return load_from


def check_source(spec: ModelSpec) -> tuple[Path | None, bool]:
    """Return (local directory or None for a hub id, is_adapter); raise ModelLoadError early."""
    path = Path(spec.source).expanduser()
    looks_local = path.exists() or spec.source.startswith((".", "/", "~")) or spec.source.count("/") > 1
    if not looks_local:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(
                f"model {spec.source!r} is a hub id but HF_HUB_OFFLINE=1: set COLQWEN_MODEL to a local directory"
            )
        return None, False
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist: set COLQWEN_MODEL to a model or adapter directory")
    if (path / "adapter_config.json").is_file():
        return path, True
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has neither config.json nor adapter_config.json: not a model directory")
    return path, False


def load_model(spec: ModelSpec, scratch: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Load (model, processor, info). ``scratch`` holds adapter views for base overrides."""
    from colqwen_pipeline.embedding.compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor

    local, is_adapter = check_source(spec)
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    if precision in {"4bit", "8bit"} and not device.startswith("cuda"):
        log.warning("%s quantisation on CPU works but is slow; use a GPU for real throughput", precision)
    if local is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing local base fails at once, not after 23 s
    load_from = str(local) if local else spec.source
    if is_adapter and spec.base_model:
        load_from = str(_patched_adapter_dir(local, spec.base_model, scratch))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        model = ColQwen2_5.from_pretrained(
            load_from,
            device_map=device,
            attn_implementation=_attention(device),
            **_quantization(precision),
        ).eval()
        processor = ColQwen2_5_Processor.from_pretrained(
            _processor_source(local, spec.base_model, load_from), max_num_visual_tokens=spec.max_visual_tokens)
    except (OSError, ValueError) as error:
        hint = "set COLQWEN_BASE_MODEL to the local base directory" if is_adapter else "check COLQWEN_MODEL"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load model from {load_from}: {first_line} ({hint})") from error
    revision = _weights_revision(local) if local else _hub_revision(spec.source)
    info = {
        "model": spec.source,
        "base_model": spec.base_model or None,
        "revision": revision,
        "device": device,
        "precision": precision,
        "attention": _attention(device),
        "max_visual_tokens": spec.max_visual_tokens,
        "dim": int(model.dim),
        "random_weights": bool(local and is_tiny_model(local)),
        "fingerprint": fingerprint(spec, revision, precision),
    }
    return model, processor, info
