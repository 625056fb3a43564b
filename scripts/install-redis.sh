#!/usr/bin/env bash
# Install Debian's redis-server if it is missing. Idempotent.
set -euo pipefail
command -v redis-server >/dev/null && exit 0
"$(dirname "$0")/apt-install.sh" redis-server
# the package's own service is not used: trackflow starts its own on a private port
(systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true) >/dev/null
