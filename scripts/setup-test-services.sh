#!/usr/bin/env bash
# Install the real services the test suite talks to: Prometheus (Debian) and Synapse (its own venv).
# Synapse is AGPL and only a test peer: it lives in its own venv and is never imported by the package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v prometheus >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing prometheus (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The Debian package may start a system service on :9090; the tests run their own instance.
    (service prometheus stop || systemctl stop prometheus) >/dev/null 2>&1 || true
  else
    log "prometheus not found and cannot apt-get install it: metrics scrape tests will skip"
  fi
fi
