#!/usr/bin/env bash
# The one-call GPU check (issue 18; docs/benchmarks.md, "GPU check"): on the bare device image,
# install the carried wheels (scripts/fetch_device_wheels.sh) into a temporary folder, then run
# colqwen_pipeline.embedding.gpu_check, which writes device_check.json, device_check.md,
# records.jsonl and device_check.log to --out (default $OUT) and prints the table last.
#
#   scripts/device_check.sh                                  # on the GPU machine: full-random, cuda
#   scripts/device_check.sh --model tiny --device cpu --out DIR --work DIR   # CPU dry run (tests)
#
# The `servers` mode measures 1 model server against N, one per GPU (CUDA_VISIBLE_DEVICES=i each),
# through one client as the pipeline uses them (colqwen_pipeline.embedding.server_scaling), and
# writes server_scaling.json to --out:
#
#   scripts/device_check.sh servers                          # N = the GPUs nvidia-smi lists (at least 2)
#   scripts/device_check.sh servers --model tiny --device cpu --servers 2 --pages 8 --out DIR --work DIR
#
# WHEELS (default .device_wheels) and PYTHON (default python3) can be set; with no wheels there the
# install is skipped (the dry run uses the project's own environment).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.device_wheels}
PYTHON=${PYTHON:-python3}

site=""
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/colqwen-device-site-XXXXXX)
  # --no-deps: fetch_device_wheels.sh names every missing dependency; the image provides the rest.
  # One wheel at a time, so a wheel that does not fit this Python costs only the steps that need it.
  for wheel in "$WHEELS"/*.whl; do
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheel" ||
      echo "device_check: could not install $wheel; the steps that need it will say so" >&2
  done
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == servers ]]; then
  shift
  exec "$PYTHON" -m colqwen_pipeline.embedding.server_scaling "$@"
fi
exec "$PYTHON" -m colqwen_pipeline.embedding.gpu_check "$@"
