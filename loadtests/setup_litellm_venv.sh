#!/usr/bin/env bash
# Create the benchmark-only venv holding the LiteLLM proxy (P2b baseline). Never touches .venv:
# LiteLLM pins its own httpx/pydantic/openai versions and must not leak into the project's env.
# opentelemetry-sdk is installed with it: without it LiteLLM retries a failing import on every request
# (~8 ms CPU each, platform notes), which would make the baseline look worse than it is.
# 1.106.2 is the version measured in the platform notes; 1.107.0 was a compromised release: never use it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LITELLM_VENV:-$ROOT/loadtests/.venv-litellm}"
UV="${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}"
if [ ! -x "$VENV/bin/python" ]; then
  "$UV" venv --python 3.11 "$VENV" >&2
fi
"$UV" pip install --python "$VENV/bin/python" 'litellm[proxy]==1.106.2' 'opentelemetry-sdk' >&2
"$VENV/bin/python" -c 'import litellm, opentelemetry.sdk; print("litellm ok")'
