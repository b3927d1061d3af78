#!/usr/bin/env bash
# What the operator console's browser tests need, installed when missing: Debian's chromium
# (a test tool's own browser download cannot work here) and the npm packages of
# tests/console (playwright-core, axe-core) at the versions of its package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[browser-deps] $*" >&2; }

if [[ ! -x /usr/bin/chromium ]]; then
  log "installing Debian's chromium (once)"
  sudo_=()
  [[ $(id -u) -eq 0 ]] || sudo_=(sudo)
  "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
    || { "${sudo_[@]}" apt-get update >/dev/null && "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
command -v node >/dev/null || { log "node is missing (apt-get install nodejs npm)"; exit 1; }

if [[ ! -f tests/console/node_modules/playwright-core/package.json || ! -f tests/console/node_modules/axe-core/axe.min.js ]]; then
  log "installing playwright-core and axe-core into tests/console/node_modules"
  # The browser comes from Debian: playwright-core never downloads one.
  (cd tests/console && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
log "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version)"
