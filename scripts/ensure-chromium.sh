#!/usr/bin/env bash
# The browser tests drive Debian's Chromium with Playwright (Playwright cannot download its own
# browsers here). Install it once if it is missing; uses sudo when not root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
run() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
run apt-get update -qq
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
