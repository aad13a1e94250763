#!/usr/bin/env bash
# Install everything the tests need (idempotent) and run the whole suite.
#   scripts/test.sh                 full suite (real vLLM engines, Ray, Prometheus, ...)
#   scripts/test.sh -k registry     extra arguments go to pytest
# `ruff check` runs first (config in pyproject.toml); a lint error fails the run before any test.
# The run fails when a test is skipped for any reason other than "needs a GPU" (tests/skip_policy.py):
# a missing tool must be installed by scripts/setup-test-services.sh, not silently skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --test
# lint first: a minute of tests is not worth spending on code that does not pass it ([tool.ruff])
.venv/bin/ruff check --quiet . || { echo "test.sh: ruff check failed (run .venv/bin/ruff check --fix .)" >&2; exit 1; }
export PYTHONUNBUFFERED=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider -p tests.skip_policy --only-gpu-skips "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
