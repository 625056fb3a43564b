#!/usr/bin/env bash
# Install the dashboard's front-end bundle (npm, cached) and Debian's Chromium for the browser test.
# Idempotent. Filled in by the dashboard work; a no-op until sinks/dashboard exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/sinks/dashboard/package.json" ] || exit 0
command -v chromium >/dev/null || "$root/scripts/apt-install.sh" chromium
cd "$root/sinks/dashboard"
if [ ! -d node_modules ] || [ package.json -nt node_modules ]; then
  npm ci --no-audit --no-fund --cache "$root/.cache/npm" >/dev/null
fi
