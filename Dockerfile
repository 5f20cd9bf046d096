# One image for every service of the deployment (deploy/compose.yaml): the model server
# (`colqwen-pipeline serve`, the default command), the Dagster webserver and the daemon, whose runs
# embed through the model server. Build from the repository root:
#   docker build -t colqwen-pipeline .
# CUDA-capable: torch's Linux wheels bring their CUDA libraries; the base image brings the runtime
# and the NVIDIA container settings, so `--gpus all` (or compose's device reservation) is enough.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/home \
    COLQWEN_HOME=/var/lib/colqwen \
    COLQWEN_INBOX=/data/inbox \
    COLQWEN_SERVER_HOST=0.0.0.0 \
    COLQWEN_SERVER_PORT=8005 \
    HF_HUB_OFFLINE=1

# Python 3.12 (Ubuntu 24.04), poppler (pdf2image fallback), LibreOffice (office files), curl (health checks).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates curl poppler-utils fonts-dejavu-core \
      libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/colqwen
# Dependencies first, so a code change does not reinstall torch.
COPY pyproject.toml README.md ./
COPY colqwen_pipeline ./colqwen_pipeline
RUN pip install ".[deploy]"
COPY workspace.yaml ./
COPY deploy/dagster.prod.yaml ${DAGSTER_HOME}/dagster.yaml

# Non-root: the state directory, the Dagster home and the inbox mount point belong to this user.
RUN useradd --create-home --uid 10001 --user-group colqwen \
 && mkdir -p "$COLQWEN_HOME" "$COLQWEN_INBOX" "$DAGSTER_HOME" \
 && chown -R colqwen:colqwen "$COLQWEN_HOME" "$COLQWEN_INBOX" "$DAGSTER_HOME"
USER colqwen

EXPOSE 8005 3000
# The model server is healthy once the model is loaded and warm; loading real weights takes minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${COLQWEN_SERVER_PORT}/health/ready" || exit 1
CMD ["colqwen-pipeline", "serve"]
