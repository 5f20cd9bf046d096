#!/usr/bin/env bash
# Download the wheels scripts/device_check.sh installs on the GPU machine, which has no network and
# whose image (Python 3.12, torch 2.11, transformers 5.17, peft, numpy, scipy, pillow, requests,
# threadpoolctl, typing-extensions) lacks these. --no-deps: every missing dependency is named here.
#
#   colpali-engine            the model classes (ColQwen2_5, its processor)
#   bitsandbytes              4-bit / 8-bit rows. Its wheel (41 MiB) holds a native library per CUDA
#                             and ROCm version; the image's torch is cu130, so only the CPU and CUDA 13.x
#                             libraries are kept (~8 MiB). Dropped, with its rows, if it would not fit.
#   pydantic(+core, -settings, annotated-types, typing-inspection, python-dotenv)
#                             colqwen_pipeline.settings, imported by the bench and bulk code
#   pypdfium2                 rasterising in the end-to-end bulk row
# Not carried: dagster, pymilvus, milvus-lite (+faiss) and redis: the end-to-end row stops at the
# embeddings stage (no index), so the check stays well under the 64 MiB a call may carry.
#
# usage: scripts/fetch_device_wheels.sh [DIR]   (default .device_wheels, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.device_wheels}
PIP=${PIP:-python3 -m pip}
LIMIT_MIB=${LIMIT_MIB:-50}  # wheels + working tree; a run carries 64 MiB at most
mkdir -p "$DIR"
rm -f "$DIR"/*.whl

PACKAGES=(
  colpali-engine==0.3.18
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3
  annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4
  pypdfium2==5.15.2
)
OPTIONAL=(bitsandbytes==0.50.2)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux1_x86_64)

download() {
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d "$DIR" "$@"
}

# Keep only the CPU and CUDA 13.x native libraries of a bitsandbytes wheel (RECORD rewritten to match).
slim_bitsandbytes() {
  python3 - "$1" <<'PY'
import re, sys, zipfile
path = sys.argv[1]
drop = re.compile(r"bitsandbytes/libbitsandbytes_(?!cpu|cuda13)[^/]*\.so$")
with zipfile.ZipFile(path) as source:
    items = [(info, source.read(info)) for info in source.infolist() if not drop.search(info.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not drop.search(line.split(",")[0])).encode()
        target.writestr(info, data)
PY
}

mib() { du -cb "$@" 2>/dev/null | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }

download "${PACKAGES[@]}"
tree_mib=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | grep total$ |
  awk '{s += $1} END {printf "%.1f", s / 1048576}')
for package in "${OPTIONAL[@]}"; do
  before=$(ls "$DIR")
  download "$package"
  for wheel in "$DIR"/bitsandbytes-*.whl; do [ -e "$wheel" ] && slim_bitsandbytes "$wheel"; done
  total=$(awk -v a="$(mib "$DIR"/*.whl)" -v b="$tree_mib" 'BEGIN {print a + b}')
  if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t > l)}'; then
    added=$(comm -13 <(echo "$before") <(ls "$DIR"))
    echo "dropping $added: wheels + tree would be $total MiB (> $LIMIT_MIB); its rows will be skipped" >&2
    (cd "$DIR" && rm -f $added)
  fi
done

ls -l "$DIR"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'
echo "wheels: $(mib "$DIR"/*.whl) MiB; working tree: $tree_mib MiB; limit ~$LIMIT_MIB MiB (64 MiB per call)"
