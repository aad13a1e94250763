"""Where the benchmarks find the checkout, write their standalone results, and find LiteLLM's venv."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
LITELLM_VENV = ROOT / "loadtests" / ".venv-litellm"
