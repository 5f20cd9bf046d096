"""Which model would produce an embedding, known without reading any weights: the spec a user
configures (a local model directory, a LoRA adapter over a local base, or a hub id when online),
its family (``families``: read from its config, or COLQWEN_MODEL_FAMILY), its resolved device and
precision, and the fingerprint the cache and the index key on, so a fully cached document never
loads the model. ``loading`` reads the weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from colqwen_pipeline.common.errors import PipelineError
from colqwen_pipeline.embedding.families import (
    ModelFamily,
    ReadConfig,
    UnknownFamily,
    detect_family,
    family_named,
    folder_reader,
)
from colqwen_pipeline.embedding.tiny import is_tiny_model
from colqwen_pipeline.index.pooling import token_pooler

log = logging.getLogger(__name__)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_TRUE = {"1", "true", "yes", "on"}


class ModelLoadError(PipelineError):
    """Missing or broken weights; the message says what to set."""


@dataclass(frozen=True)
class ModelSpec:
    source: str  # local directory or hub id
    base_model: str = ""  # local base directory overriding an adapter's base_model_name_or_path
    device: str = "auto"
    precision: str = "auto"  # auto, bf16, fp32, 4bit, 8bit
    max_visual_tokens: int = 768
    token_pooling: int = 0  # COLQWEN_TOKEN_POOLING: page vectors pooled by this factor (0: off)
    family: str = ""  # COLQWEN_MODEL_FAMILY: empty = read it from the weights' config


@dataclass(frozen=True)
class ModelIdentity:
    """What produced an embedding; every field is known before the weights are read."""

    model: str
    family: str  # a name in families.FAMILIES
    base_model: str | None
    revision: str
    device: str
    precision: str
    attention: str
    max_visual_tokens: int
    dim: int
    random_weights: bool
    fingerprint: str
    load_from: str  # what from_pretrained receives (an adapter's base is resolved separately)
    local: bool
    served_by: str = ""  # URL of the model server that runs it; empty: this process (device is local)

    @property
    def local_cuda(self) -> bool:
        """A CUDA device of this process: the only case where this process may read GPU memory."""
        return self.device.startswith("cuda") and not self.served_by

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_family(self) -> ModelFamily:
        return family_named(self.family)


def model_marker(identity: ModelIdentity) -> dict[str, Any]:
    """The ``"model"`` entry of search results: which weights scored them (family, vector width),
    and whether the scores mean nothing."""
    return {
        "fingerprint": identity.fingerprint,
        "family": identity.family,
        "dim": identity.dim,
        "random_weights": identity.random_weights,
    }


def hub_offline() -> bool:
    """Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, at import."""
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# What CUDA (or ROCm, which torch also calls "cuda") needs on a host: no such node, no GPU. The
# NVIDIA driver's nodes, AMD's compute node, and WSL2's GPU bridge.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def resolve_device(requested: str) -> str:
    if requested == "cpu" or (requested == "auto" and not any(map(os.path.exists, GPU_DEVICE_NODES))):
        # torch would answer the same after a second or two of importing: planning an ingest (a
        # sensor tick, a run of unchanged documents) then imports no torch at all
        return "cpu"
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    kind = requested.split(":")[0]
    if kind in available and not available[kind]:
        warn_device_fallback(requested, kind)
        return "cpu"
    return requested


@functools.cache
def warn_device_fallback(requested: str, kind: str) -> None:
    """Once per process: identify() runs for the cache key and again inside load_model."""
    log.warning("COLQWEN_DEVICE=%s but %s is not available: falling back to CPU (slow)", requested, kind)


def resolve_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return requested


def attention_implementation(device: str, precision: str) -> str:
    """flash_attention_2 needs the package, an Ampere+ GPU and a 16-bit compute dtype; else sdpa."""
    if not device.startswith("cuda") or precision == "fp32":
        return "sdpa"
    import torch
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available() and torch.cuda.get_device_capability(device)[0] >= 8:
        return "flash_attention_2"
    return "sdpa"


def weights_revision(directory: Path) -> str:
    """Cheap content revision of a local model: config files in full, weights by size + edges.

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


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot of a hub id, if one was downloaded before (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_revision(repo_id: str) -> str:
    snapshot = _cached_snapshot(repo_id)
    if snapshot is not None:
        return snapshot.name  # snapshots/<commit sha>
    if hub_offline():
        return "unknown"
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, timeout=10).sha or "unknown"
    except Exception:  # unreachable hub: the id alone still separates models
        return "unknown"


def _looks_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def check_source(spec: ModelSpec) -> tuple[Path | None, bool]:
    """Return (local directory or None for a hub id, is_adapter); raise ModelLoadError early."""
    if not spec.source:
        raise ModelLoadError("no model configured: set COLQWEN_MODEL to a model or adapter directory or a hub id")
    if not _looks_local(spec.source):
        if hub_offline() and _cached_snapshot(spec.source) is None:
            raise ModelLoadError(
                f"model {spec.source!r} is a hub id, HF_HUB_OFFLINE is set and it is not in the local HF cache: "
                "set COLQWEN_MODEL to a local model directory (or unset HF_HUB_OFFLINE to download it)"
            )
        return None, False
    path = Path(spec.source).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"model directory {path} does not exist: set COLQWEN_MODEL to a model or adapter directory"
        )
    if (path / "adapter_config.json").is_file():
        return path, True
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has neither config.json nor adapter_config.json: set COLQWEN_MODEL to a model or adapter directory"
        )
    return path, False


def adapter_base(adapter: Path, override: str) -> Path:
    """The local base directory of an adapter: COLQWEN_BASE_MODEL, the recorded path, or the HF cache."""
    if override:
        base = Path(override).expanduser()
        if not (base / "config.json").is_file():
            raise ModelLoadError(f"COLQWEN_BASE_MODEL={override} is not a model directory (no config.json)")
        return base.resolve()
    try:
        recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (ValueError, KeyError) as error:
        raise ModelLoadError(f"{adapter}/adapter_config.json is unreadable or names no base model ({error})") from error
    if (Path(recorded).expanduser() / "config.json").is_file():
        return Path(recorded).expanduser().resolve()
    cached = _cached_snapshot(recorded)
    if cached is not None:
        return cached
    raise ModelLoadError(
        f"adapter {adapter} needs its base model {recorded!r}, which is not on this machine: "
        f"set COLQWEN_BASE_MODEL to a local copy (hf download {recorded} --local-dir DIR)"
    )


def fingerprint(
    name: str, revision: str, family: ModelFamily, precision: str, max_visual_tokens: int, pooling: str = ""
) -> str:
    """The family and its vector width are part of it, so vectors of another family (or width) never
    share a cache entry or a collection; ``pooling``: a token pooler's tag, likewise for pooled pages."""
    core = f"{name}@{revision[:12]}/{family.name}/d{family.dim}/{precision}/vt{max_visual_tokens}"
    return core + (f"/{pooling}" if pooling else "")


def legacy_fingerprint(identity: ModelIdentity) -> str:
    """The fingerprint the same model had before families (no family, no width): collections and
    artifacts written then are this model's vectors, served until a rebuild replaces them."""
    return identity.fingerprint.replace(f"/{identity.family}/d{identity.dim}/", "/", 1)


def _hub_reader(repo_id: str) -> ReadConfig:
    """A hub model's small JSON files: from the local HF cache, or downloaded when online."""

    def read(name: str) -> dict[str, Any] | None:
        try:
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(repo_id, name)).read_text())
        except Exception:  # absent file, unreachable hub, offline and not cached: the detection says what to set
            return None

    return read


def model_family(spec: ModelSpec, local: Path | None, base: Path | None) -> ModelFamily:
    """COLQWEN_MODEL_FAMILY when set, else what the weights' config (or an adapter's base's) says."""
    try:
        if spec.family:
            return family_named(spec.family)
        if local is None:
            read = _hub_reader(spec.source)
            recorded = (read("adapter_config.json") or {}).get("base_model_name_or_path", "")
            base_read = folder_reader(Path(spec.base_model).expanduser()) if spec.base_model else None
            return detect_family(read, base_read or (_hub_reader(recorded) if recorded else None))
        return detect_family(folder_reader(local), folder_reader(base) if base else None)
    except (UnknownFamily, ValueError) as error:  # ValueError: a config that is no JSON
        raise ModelLoadError(f"model {spec.source}: {error}") from error


def identify(spec: ModelSpec) -> ModelIdentity:
    """Everything about the model except its weights; raises ModelLoadError for a bad source."""
    local, is_adapter = check_source(spec)
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device)
    base: Path | None = adapter_base(local, spec.base_model) if is_adapter and local else None
    if local is None:
        revision, name = _hub_revision(spec.source), spec.source
    else:
        revision = weights_revision(local)
        if base is not None:  # another base under the same adapter gives other vectors
            revision = hashlib.sha256(f"{revision}+{weights_revision(base)}".encode()).hexdigest()[:16]
        name = local.resolve().name
    family = model_family(spec, local, base)
    return ModelIdentity(
        model=spec.source,
        family=family.name,
        base_model=str(base) if base else None,
        revision=revision,
        device=device,
        precision=precision,
        attention=attention_implementation(device, precision),
        max_visual_tokens=spec.max_visual_tokens,
        dim=family.dim,
        random_weights=bool(local and (is_tiny_model(local) or (base is not None and is_tiny_model(base)))),
        fingerprint=fingerprint(
            name, revision, family, precision, spec.max_visual_tokens, token_pooler(spec.token_pooling).tag
        ),
        load_from=str(local.resolve()) if local else spec.source,
        local=local is not None,
    )
