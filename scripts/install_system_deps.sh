#!/usr/bin/env bash
# Debian packages the pipeline uses: poppler (pdf2image), Redis (cache, tests), LibreOffice (office
# files), Chromium (the UI test), Postgres (the production rehearsal). Installed only when running
# as root with apt; otherwise say what is missing.
set -euo pipefail
declare -A needs=(
  [pdftoppm]=poppler-utils
  [redis-server]=redis-server
  [soffice]="libreoffice-writer-nogui libreoffice-impress-nogui libreoffice-calc-nogui"
  [chromium]=chromium  # the UI test drives the Dagster UI in headless Chromium
)
missing=()
for command in "${!needs[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=(${needs[$command]})
done
# Postgres (the production rehearsal's Dagster storage): Debian keeps its binaries off PATH.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: missing system packages (install them for full functionality): ${missing[*]}" >&2
fi
