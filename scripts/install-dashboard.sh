#!/usr/bin/env bash
# Install the dashboard's front-end bundle and Debian's Chromium for the browser test.
#
# - npm ci in sinks/dashboard (npm cache under .cache/npm), only when package-lock.json changed;
# - copies Apache ECharts' ES-module build and its licence into sinks/dashboard/static/vendor/
#   (git-ignored: the page loads it from the project, never from a CDN);
# - apt-installs `chromium` if missing (scripts/apt-install.sh), unless TRACKFLOW_SKIP_CHROMIUM=1.
# Idempotent: a second run does nothing but check.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dash="$root/sinks/dashboard"
[ -f "$dash/package.json" ] || exit 0

if [ -z "${TRACKFLOW_SKIP_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
  "$root/scripts/apt-install.sh" chromium
fi

cd "$dash"
stamp="node_modules/.trackflow-installed"
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  mkdir -p "$root/.cache/npm"
  npm ci --no-audit --no-fund --cache "$root/.cache/npm" >/dev/null 2>&1 \
    || npm ci --no-audit --no-fund --cache "$root/.cache/npm"
  touch "$stamp"
fi

vendor="static/vendor"
mkdir -p "$vendor"
src="node_modules/echarts/dist/echarts.esm.min.js"
if ! cmp -s "$src" "$vendor/echarts.esm.min.js"; then
  cp "$src" "$vendor/echarts.esm.min.js"
  cp node_modules/echarts/LICENSE "$vendor/echarts.LICENSE"
fi
