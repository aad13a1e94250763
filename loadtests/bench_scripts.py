"""P4 (``bench_batch.py``) and the Matrix benchmark (``bench_matrix.py``) for ``ray-serve-cai bench``: each
script runs as it does standalone (``python -m loadtests.<name>`` from the checkout), writing its JSON into the benchmark's scratch folder, and its rounds
become rows. (They run as scripts rather than imported functions because each is one long ``main``
that their own CLI options shape.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests.paths import ROOT
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline


def _script(name: str, args: list[str], out: Path) -> dict[str, Any]:
    """Run ``python -m loadtests.<name>`` in the checkout (its output streams to this terminal); its results
    JSON, read from ``out``."""
    done = subprocess.run([sys.executable, "-m", f"loadtests.{name}", *args], cwd=ROOT, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{name} exited with code {done.returncode}")
    return json.loads(out.read_text())


def run_batch(settings: BenchSettings) -> BenchOutput:
    prompts = 64 if settings.tiny else 2000
    # an absolute --name puts the JSON in the scratch folder, not in loadtests/results/
    data = _script("bench_batch", ["--prompts", str(prompts), "--rounds", str(settings.rounds),
                                      "--name", str(settings.workdir / "batch")], settings.workdir / "batch.json")
    rows, headlines = [], []
    for part, ours, base in (("offline", "ours", "baseline"), ("online", "batch", "client")):
        section = data.get(part)
        if not section:
            continue
        names = {"ours": "batch run CLI", "baseline": "LLM.generate", "baseline_inline": "LLM.generate, engine inline",
                 "batch": "OpenAI batch via router", "client": "c=64 client via router",
                 "client_httpx": "c=64 httpx client via router"}
        for index, entry in enumerate(section["rounds"]):
            for side in (side for side in entry if side != "order"):
                rows.append(Row(round=index, target=names[side], metrics={
                    k: v for k, v in entry[side].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}))
        headlines.append(headline(f"{names[ours]} tok/s / {names[base]}", section["ratios"],
                                  at_least=0.9 if part == "offline" else 0.95))
        headlines.append(headline(f"{names[ours]} tok/s", section["median_ours_tps"], "tok/s"))
        if "inline" in section:  # the same engine mode on both sides: the pipeline's own cost
            headlines.append(headline(f"{names[ours]} tok/s / LLM.generate with its engine inline",
                                      section["inline"]["ratios"]))
        if "httpx" in section:  # what an openai-SDK user's own client would reach
            headlines.append(headline(f"{names[ours]} tok/s / {names['client_httpx']}", section["httpx"]["ratios"]))
        if part == "online":
            headlines.append(headline("interactive p50 during the batch", section["interactive_p50_ms_during_batch"], "ms"))
            headlines.append(headline("interactive p50 idle", section["idle_interactive_p50_ms"], "ms"))
    return BenchOutput(rows=rows, headlines=headlines, details={"prompts": prompts, "max_tokens": data["max_tokens"]})


def run_matrix(settings: BenchSettings) -> BenchOutput:
    commands, users = (10, 5) if settings.tiny else (50, 5)
    data = _script("bench_matrix", ["--rounds", str(settings.rounds), "--commands", str(commands), "--users",
                                       str(users), "--name", str(settings.workdir / "matrix")],
                   settings.workdir / "matrix.json")
    rows = [Row(round=r["round"], target=path, latencies_ms=r[path]["latencies_ms"],
                metrics={"p50_ms": r[path]["p50_ms"], "p95_ms": r[path]["p95_ms"], "n": r[path]["n"]})
            for r in data["rounds"] for path in ("bot", "direct", "echo")]
    summary = data["summary"]
    return BenchOutput(rows=rows, headlines=[
        headline("!infer via the bot p50", summary["bot_p50_ms"], "ms"),
        headline("!infer via the bot p95", summary["bot_p95_ms"], "ms"),
        headline("straight to the router p50", summary["direct_p50_ms"], "ms"),
        headline("bot overhead p50", summary["overhead_p50_ms"], "ms"),
        headline("homeserver floor p50 (echo client, no inference)", summary["echo_p50_ms"], "ms"),
        headline("bot overhead beyond the homeserver floor p50", summary["beyond_homeserver_p50_ms"], "ms")],
        details={"commands": commands, "users": users})
