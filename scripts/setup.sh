#!/usr/bin/env bash
# Create .venv and install ray-serve-cai with the CPU build of vLLM.
#
#   scripts/setup.sh            runtime only (serve the tiny model, run the CLI)
#   scripts/setup.sh --test     plus test tools: pytest, openai SDK, Synapse, Prometheus and redis-server (apt)
#
# Environment:
#   VENV          where to create the virtualenv (default: .venv in the repo)
#   TORCH_WHEELS  a directory holding torch-2.13.0+cpu wheels (default: /opt/wheels if present)
#   TORCH_INDEX   PyTorch CPU package index used when TORCH_WHEELS is absent
#                 (default: https://download.pytorch.org/whl/cpu)
#   VLLM_FLAVOR   cpu (default) or gpu (installs the CUDA `vllm` build instead; no overrides)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
VLLM_FLAVOR="${VLLM_FLAVOR:-cpu}"
WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup.sh: Python >= 3.11 is required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1
fi

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
  log "installing uv (needed for dependency overrides that pip cannot express)"
  "$PYTHON" -m pip install --quiet --user uv
fi
UV="$(command -v uv || echo "$HOME/.local/bin/uv")"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$UV" venv --quiet --python "$PYTHON" "$VENV"
fi

UV_ARGS=(--python "$VENV/bin/python")
EXTRAS="cpu"
if [ "$VLLM_FLAVOR" = "cpu" ]; then
  UV_ARGS+=(--override "$ROOT/scripts/overrides-cpu.txt" --index-strategy unsafe-best-match)
  TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
  if ls "$TORCH_WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    UV_ARGS+=(--find-links "$TORCH_WHEELS")
  else
    UV_ARGS+=(--extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
  PINS=("torch==2.13.0+cpu")
else
  EXTRAS="gpu"
  PINS=()
fi
[ "$WITH_TEST" = 1 ] && EXTRAS="$EXTRAS,test"

log "installing ray-serve-cai[$EXTRAS] (first run takes a minute or two)"
"$UV" pip install --quiet "${UV_ARGS[@]}" -e "$ROOT[$EXTRAS]" "${PINS[@]}"

if [ "$WITH_TEST" = 1 ]; then
  "$ROOT/scripts/setup-test-services.sh"
fi
log "done: $VENV"
