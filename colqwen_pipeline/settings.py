"""Every setting of the pipeline, read from ``COLQWEN_*`` environment variables and ``.env``.

Defaults run on a laptop: all state under ``./var``, Milvus Lite, no Redis, and the tiny
random-weight model when no real model is configured.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLQWEN_", env_file=".env", extra="ignore")

    home: Path = Field(Path("var"), description="State directory: pages, embeddings, Milvus Lite, Dagster home.")
    inbox: Path = Field(Path("data/inbox"), description="Folder whose files are indexed.")

    # Model
    model: str = Field("", description="Local model/adapter directory or hub id; empty = tiny test model.")
    base_model: str = Field("", description="Local base model directory for a LoRA adapter (offline use).")
    model_family: str = Field(
        "",
        description="colqwen2.5, colqwen3 or colnomic; empty = read from the weights' config.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps.", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    precision: Literal["auto", "bf16", "fp32", "4bit", "8bit"] = "auto"
    batch_size: int = Field(4, ge=1)
    max_visual_tokens: int = Field(768, ge=4)
    token_pooling: int = Field(
        0, ge=0, le=64, description="Pool factor of colpali-engine's HierarchicalTokenPooler for page vectors (0: off)."
    )
    embed_wave_pages: int = Field(
        64, ge=1, description="Pages of many documents embedded together before they are written to Milvus."
    )

    # Rasterising
    dpi: int = Field(200, ge=36, le=600, description="DPI for documents under `long_document_pages`.")
    long_document_dpi: int = Field(150, ge=36, le=600)
    long_document_pages: int = Field(50, ge=1)
    max_page_pixels: int = Field(40_000_000, description="Pages above this are scaled down.")
    max_pages: int = Field(2000, ge=1)
    max_file_mb: int = Field(500, ge=1)
    render_timeout_s: float = Field(300.0, gt=0)
    render_memory_mb: int = Field(4096, ge=256)
    pdf_renderer: Literal["pypdfium2", "pdf2image"] = "pypdfium2"
    pdf_password: str = Field("", description="Password tried on encrypted PDFs.")
    allow_partial: bool = Field(
        True, description="Index a PDF without the pages no renderer can draw (false: the document fails)."
    )
    render_workers: int = Field(
        2, ge=1, description="Documents read and rendered at once, ahead of the model (each in its own subprocess)."
    )

    # Index
    index_backend: Literal["milvus"] = Field(
        "milvus", description="Index implementation (index.BACKENDS); Lite or a server is chosen by the URI."
    )
    milvus_uri: str = Field("", description="Milvus URI; empty = Milvus Lite file under home.")
    milvus_token: str = Field("", description="Milvus token/password (server only).")
    collection: str = "colqwen_pages"
    # Search (index/milvus.py): first-stage size and vector index types
    index_centroids_per_page: int = Field(8, ge=1, le=255, description="k-means centroids per page (first stage).")
    index_hits_per_token: int = Field(64, ge=1, le=16384, description="First-stage ANN hits per query token.")
    index_candidates: int = Field(20, ge=1, description="Pages scored by exact MaxSim per query.")
    index_type: Literal["HNSW", "FLAT"] = Field("HNSW", description="Vector index of the centroids (first stage).")
    index_search_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Bounded", description="Consistency of search on a server (Strong: sees every write, ~1 s slower per query)."
    )
    index_partitions: int = Field(
        16, ge=1, le=1024, description="Partition-key buckets of the pages collection on a server (Lite: always 16)."
    )
    index_token_dir: str = Field(
        "",
        description="Token stores (one folder per physical collection); empty = beside a Lite file, "
        "or <home>/index-tokens/<server> for a server.",
    )
    index_token_bits: int = Field(7, ge=4, le=8, description="Bits per dimension of the stored page tokens.")

    # Cache
    redis_url: str = Field("", description="redis://[:password@]host:port/db; empty = no cache.")
    cache_ttl_s: int = Field(24 * 3600, ge=1)
    # Embedding engine: a Redis password kept out of the URL (env COLQWEN_REDIS_PASSWORD only), and
    # whether a batch may mix page sizes (padding: faster on odd-sized scans, vectors depend on batch-mates)
    redis_password: str = Field("", description="Redis password, when not in COLQWEN_REDIS_URL.")
    embed_mix_page_sizes: bool = Field(False, description="Batch pages of different visual-token counts together.")

    # Model server (`colqwen-pipeline serve`) and the pipeline's remote mode
    model_server_url: str = Field(
        "",
        description="http://host:8005 of a model server, or several comma-separated; empty = load in-process.",
        pattern=r"^\s*$|^\s*https?://[^\s,]+\s*(,\s*https?://[^\s,]+\s*)*$",
    )
    model_server_key: str = Field("", description="API key the pipeline sends to the model server (Bearer).")
    model_server_timeout_s: float = Field(600.0, gt=0, description="Per request; a large batch on CPU is slow.")
    model_server_wait_s: float = Field(300.0, ge=0, description="How long a client waits for the server's READY.")
    model_server_cooldown_s: float = Field(
        30.0, gt=0, description="A model server that failed a request gets no requests for this long."
    )
    server_host: str = Field("127.0.0.1", description="Bind address of `serve` (0.0.0.0 in a container).")
    server_port: int = Field(8005, ge=1, le=65535)
    server_max_images: int = Field(32, ge=1, description="Images per /embed_image request.")
    server_max_queries: int = Field(64, ge=1, description="Queries per /embed_text request.")
    server_max_query_chars: int = Field(2000, ge=1)
    server_max_request_mb: int = Field(64, ge=1, description="Request body limit (all images together).")
    server_max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused, not decoded.")
    server_max_top_k: int = Field(100, ge=1)
    server_max_query_tokens: int = Field(512, ge=1, description="Query tokens (as the processor counts them).")
    server_max_pixels_in_flight: int = Field(
        40_000_000, ge=1, description="Decoded pixels of all /embed_image requests together (~30 bytes each at peak)."
    )
    server_pixel_wait_s: float = Field(10.0, ge=0, description="Wait for pixel budget before answering 503.")
    server_request_timeout_s: float = Field(
        60.0, gt=0, description="Time a client has to send a whole request (headers and body): slow clients are cut."
    )
    server_expose_paths: bool = Field(False, description="Show absolute server paths (model, image_path) to clients.")
    # Server web page, uploads and API keys (issue 15; docs/deployment.md)
    server_api_keys: str = Field(
        "", description="Comma-separated search:KEY or admin:KEY entries; empty (and no keys file) = no auth."
    )
    server_api_keys_file: str = Field("", description="File of API keys, one per line (a secrets mount).")
    server_session_hours: float = Field(12.0, gt=0, description="A web sign-in lasts this long (signing out ends it).")
    trash_days: float = Field(30.0, ge=0, description="Removed documents wait this long in $COLQWEN_HOME/trash/.")
    server_max_upload_mb: int = Field(100, ge=1, description="Largest document accepted by POST /documents.")
    server_index_uploads: Literal["auto", "always", "never"] = Field(
        "auto", description="Who indexes uploads: auto = the server unless a Dagster daemon is running."
    )

    # Automation (sensor, schedule)
    sensor_interval_s: int = Field(15, ge=1, description="Seconds between inbox sensor ticks.")
    max_documents_per_run: int = Field(
        200, ge=1, description="Documents per Dagster run (sensor, schedule, CLI, UI backfills): one model load each."
    )
    allow_mass_removal: bool = Field(
        False, description="Remove documents even when most of the inbox vanished at once (else: refused)."
    )
    settle_s: float = Field(5.0, ge=0, description="A file untouched this long counts as fully written.")
    reindex_cron: str = Field("0 2 * * *", description="Bulk reindex schedule (cron).")

    # Asset checks and evaluation (evaluation/, defs/checks.py; see docs/evaluation.md)
    eval_set: Path = Field(Path("data/eval/queries.jsonl"), description="Eval JSONL file or BEIR/ViDoRe directory.")
    eval_split: str = Field("test", description="qrels/<split>.tsv of a BEIR directory.")
    embedding_dim: int = Field(
        0, ge=0, description="Token vector width the embedding check expects (0: the model family's, 128 or 320)."
    )
    norm_tolerance: float = Field(0.01, gt=0, description="Allowed |norm - 1| of a stored (fp16) token vector.")
    quality_min_ndcg_at_5: float = Field(0.5, ge=0, le=1)
    quality_min_recall_at_5: float = Field(0.7, ge=0, le=1)
    quality_severity: Literal["WARN", "ERROR"] = Field("WARN", description="Severity of a failed retrieval_quality.")
    fidelity_k: int = Field(5, ge=1, description="Top-k compared with exact MaxSim by index_fidelity.")
    fidelity_min_recall: float = Field(0.99, ge=0, le=1)
    min_pages_per_s_cpu: float = Field(0.02, ge=0, description="Throughput floor on CPU (and other devices).")
    min_pages_per_s_cuda: float = Field(1.0, ge=0, description="Throughput floor on a CUDA GPU.")

    @cached_property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def pages_dir(self) -> Path:
        return self.home_dir / "pages"

    @property
    def embeddings_dir(self) -> Path:
        return self.home_dir / "embeddings"

    @property
    def dagster_home(self) -> Path:
        return self.home_dir / "dagster"

    @property
    def tiny_model_dir(self) -> Path:
        return self.home_dir / "models" / f"tiny-{self.model_family or 'colqwen2.5'}"

    @property
    def model_server_urls(self) -> list[str]:
        """COLQWEN_MODEL_SERVER_URL as a list: each URL once, without a trailing slash."""
        urls = [url.strip().rstrip("/") for url in self.model_server_url.split(",")]
        return list(dict.fromkeys(url for url in urls if url))

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.home_dir / "milvus.db")
