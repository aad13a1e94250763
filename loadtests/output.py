"""What a benchmark prints and writes: progress lines on stderr, a standalone run's results file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests.paths import RESULTS

if TYPE_CHECKING:
    from ray_serve_cai.bench.results import BenchOutput


def progress(message: str) -> None:
    """A progress line on stderr: long start-ups must never look hung."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def write_output(output: BenchOutput, path: Path) -> None:
    """A standalone run's ``BenchOutput``: its headlines printed, the whole of it written to ``path``."""
    for h in output.headlines:
        print(f"{h.metric}: {h.value} {h.unit}" + (f" (target {h.target}: {'met' if h.ok else 'NOT met'})" if h.target else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(output.model_dump_json(indent=1))
    print(f"wrote {path}")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
