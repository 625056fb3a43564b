#!/usr/bin/env bash
# apt-get install the named Debian packages (as root or through sudo), updating the lists once.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
stamp="/var/lib/apt/periodic/trackflow-update-stamp"
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
  $SUDO apt-get update -qq && $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
fi
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
