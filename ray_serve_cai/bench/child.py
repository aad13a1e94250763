"""Run one registered benchmark in this process (the runner starts it in a session of its own).

    python -m ray_serve_cai.bench.child NAME MODULE:FUNCTION SETTINGS.json OUTPUT.json

Writes the validated ``BenchOutput`` to OUTPUT.json; on failure writes ``{"error": ..., "missing": bool}``
there and exits 1. SIGTERM becomes SystemExit, so the benchmark's ``finally`` blocks stop what it started.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from ray_serve_cai.bench.registry import Benchmark, BenchmarkMissing
from ray_serve_cai.bench.results import BenchOutput, BenchSettings


def main(argv: list[str]) -> int:
    name, target, settings_path, output_path = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = BenchSettings.model_validate_json(Path(settings_path).read_text())
    out = Path(output_path)
    try:
        function = Benchmark(name, name, "", target, 0).load()
        output = BenchOutput.model_validate(function(settings))
    except BenchmarkMissing as exc:
        out.write_text(json.dumps({"error": str(exc), "missing": True}))
        return 1
    except Exception as exc:  # reported in the results file; the traceback stays on this terminal
        import traceback

        traceback.print_exc()
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000], "missing": False}))
        return 1
    out.write_text(output.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
