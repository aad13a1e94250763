"""What a benchmark prints and writes: progress lines on stderr, a standalone run's results file."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests.paths import RESULTS, ROOT
from ray_serve_cai.bench.machine import git_commit
from ray_serve_cai.bench.results import run_stem

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


def result_path(name: str) -> Path:
    """Where a standalone run writes: ``loadtests/results/<date>-<commit>-<name>.json`` (UTC date, short
    commit: the harness's naming, ``run_stem``); an absolute ``name`` (a scratch folder's) as it is + ``.json``."""
    if Path(name).is_absolute():
        return Path(f"{name}.json")
    return RESULTS / f"{run_stem(dt.datetime.now(dt.UTC), git_commit(ROOT)[0])}-{name}.json"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """``payload`` as JSON at ``result_path(name)``; returns the path."""
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
