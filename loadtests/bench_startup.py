"""Start-up: ``ray-serve-cai up`` until it prints ``ready:`` against a stock vLLM server until its first
generation, side by side on the same model, in alternating rounds (the order flips every round).

Both sides count to the same moment: a generation answered. ``up`` prints ``ready:`` only after one
(``_wait_until_generates``); for the stock server the clock stops at its first 200 to a one-token
completion. The first round's starts are reported apart from the rest ("first" vs "warm": the first
start of a run may read more from disk).

Where the seconds go comes from the logs both sides already write, on one clock (seconds since the
start command): Serve's controller and replica logs, and vLLM's own lines (API server / replica,
EngineCore, worker, "init engine ... took"). The part from the process that imports vLLM to the
engine's "init engine" line is vLLM's own start-up on both sides; everything before it in ``up`` is Ray
and Serve getting a replica to run it.

    .venv/bin/python -m loadtests.bench_startup [--rounds 6] [--config serve_configs/local-tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launchers.local import free_port
from loadtests.output import write_result
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.servers import start_vllm
from loadtests.upstack import UpStack

if TYPE_CHECKING:
    from ray_serve_cai.bench.results import BenchOutput, BenchSettings

# (event, regex over a log line); the first match of each counts. vLLM prints "MM-DD HH:MM:SS".
VLLM_EVENTS = (
    ("vllm_engine_core_s", re.compile(r"\(EngineCore pid=\d+\) INFO (\d\d-\d\d \d\d:\d\d:\d\d) .*Initializing a V1 LLM engine")),
    ("vllm_worker_s", re.compile(r"\((?:VllmWorker-0|Worker) pid=\d+\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d)")),
    ("vllm_engine_ready_s", re.compile(r"\(EngineCore pid=\d+\) INFO (\d\d-\d\d \d\d:\d\d:\d\d) .*init engine .* took")),
)
STOCK_EVENTS = (("vllm_api_server_s", re.compile(r"\(APIServer pid=\d+\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d)")),)
# Serve's logs: "INFO 2026-12-07 12:59:04,857 controller ..."
SERVE_EVENTS = (
    ("serve_controller_s", "controller_*.log", re.compile(r"^\w+ (\S+ \S+) controller \d+ -- Controller starting")),
    ("app_built_s", "controller_*.log", re.compile(r"^\w+ (\S+ \S+) controller \d+ -- Imported and built app")),
    ("engine_replica_s", "replica_*engine*.log", re.compile(r"^\w+ (\S+ \S+) .* Started initializing replica")),
)


def _vllm_time(stamp: str, year: int) -> float:
    return datetime.strptime(f"{year}-{stamp}", "%Y-%m-%d %H:%M:%S").timestamp()


def _serve_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def vllm_events(text: str, started: float, events=VLLM_EVENTS) -> dict[str, float]:
    """Seconds from ``started`` (epoch) to the first line of each event in ``text`` (vLLM's log lines)."""
    year = datetime.fromtimestamp(started).year
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name, pattern in events:
            match = pattern.search(line)
            if match and name not in found:
                found[name] = round(_vllm_time(match.group(1), year) - started, 1)
    return found


def up_events(log_dir: Path, started: float) -> dict[str, float]:
    """Serve's and vLLM's start-up events in a Ray session's logs, in seconds since ``started``."""
    found: dict[str, float] = {}
    for name, glob, pattern in SERVE_EVENTS:
        for path in sorted((log_dir / "serve").glob(glob)):
            for line in path.read_text(errors="replace").splitlines():
                match = pattern.search(line)
                if match:
                    found.setdefault(name, round(_serve_time(match.group(1)) - started, 1))
                    break
    worker_logs = "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("worker-*.out")))
    return found | vllm_events(worker_logs, started)


def _first_generation(url: str, model: str, deadline: float) -> None:
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not generate in time")


def start_stock(workdir: Path, number: int) -> dict[str, Any]:
    """A stock vLLM server from nothing to its first generation; stopped again."""
    log = workdir / f"stock-{number}.log"
    started_epoch, started = time.time(), time.perf_counter()
    # start_vllm waits for /health; a generation may come later than that (it did not, here)
    stock = start_vllm(log, free_port(), timeout=600)
    health_s = time.perf_counter() - started
    try:
        _first_generation(stock.url, "tiny-chat", time.monotonic() + 300)
        ready_s = time.perf_counter() - started
    finally:
        stock.kill(signal.SIGTERM)
    return {"ready_s": round(ready_s, 2), "health_s": round(health_s, 2),
            **vllm_events(log.read_text(errors="replace"), started_epoch, STOCK_EVENTS + VLLM_EVENTS)}


def start_up(config: Path, workdir: Path, number: int) -> dict[str, Any]:
    """``ray-serve-cai up`` from nothing to ``ready:``; its timeline from its own and Ray's logs; stopped."""
    log = workdir / f"up-{number}.log"
    started_epoch = time.time()
    stack = UpStack(config, log)
    try:
        stack.wait_ready(900)
        text = log.read_text(errors="replace")
        ray_logs = re.search(r"\(logs: (\S+)\)", text)
        events = up_events(Path(ray_logs.group(1)) / "session_latest" / "logs", started_epoch) if ray_logs else {}
    finally:
        stopped = stack.stop()
    return {"ready_s": round(stack.startup_s, 2), **stack.phases, **events, "teardown_s": stopped["teardown_s"]}


def attribution(side: dict[str, Any], vllm_start_key: str | None) -> dict[str, float]:
    """Seconds before vLLM starts (``vllm_start_key``: when the process that imports it begins; None: at
    once, as the stock server's own process does), vLLM's own start-up (to its "init engine" line, imports
    included), and from there to ready."""
    if (vllm_start_key is not None and vllm_start_key not in side) or "vllm_engine_ready_s" not in side:
        return {}
    before = side[vllm_start_key] if vllm_start_key else 0.0
    return {"before_vllm_s": before, "vllm_s": round(side["vllm_engine_ready_s"] - before, 1),
            "after_vllm_s": round(side["ready_s"] - side["vllm_engine_ready_s"], 1)}


def measure(rounds: int, config: Path, workdir: Path, pause_s: float = 5.0) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for number in range(rounds):
        order = ("stock", "up") if number % 2 == 0 else ("up", "stock")
        entry: dict[str, Any] = {"round": number, "order": list(order)}
        for side in order:
            print(f"round {number + 1}/{rounds}: starting {side}", flush=True)
            entry[side] = start_stock(workdir, number) if side == "stock" else start_up(config, workdir, number)
            print(f"round {number + 1}/{rounds}: {side} ready in {entry[side]['ready_s']:.1f} s", flush=True)
            time.sleep(pause_s)  # vLLM's worker busy-polls for a while after its last work
        entry["up"]["attribution"] = attribution(entry["up"], "engine_replica_s")
        entry["stock"]["attribution"] = attribution(entry["stock"], None)
        entry["up_minus_stock_s"] = round(entry["up"]["ready_s"] - entry["stock"]["ready_s"], 2)
        results.append(entry)
    warm = results[1:] or results
    med = lambda values: round(statistics.median(values), 2) if values else None  # noqa: E731
    summary = {
        "first: up ready s": results[0]["up"]["ready_s"], "first: stock ready s": results[0]["stock"]["ready_s"],
        "first: up - stock s": results[0]["up_minus_stock_s"],
        "warm: up ready s (median)": med([r["up"]["ready_s"] for r in warm]),
        "warm: stock ready s (median)": med([r["stock"]["ready_s"] for r in warm]),
        "warm: up - stock s (median)": med([r["up_minus_stock_s"] for r in warm]),
    }
    for side in ("up", "stock"):
        keys = sorted({k for r in warm for k, v in r[side].items() if isinstance(v, (int, float))} |
                      {f"attribution.{k}" for r in warm for k in r[side]["attribution"]})
        for key in keys:
            values = [r[side]["attribution"].get(key.split(".", 1)[1]) if key.startswith("attribution.")
                      else r[side].get(key) for r in warm]
            summary[f"warm: {side} {key} (median)"] = med([v for v in values if isinstance(v, (int, float))])
    return {"rounds": results, "summary": summary, "config": str(config),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(settings: BenchSettings) -> BenchOutput:
    """``ray-serve-cai bench --only startup``."""
    from ray_serve_cai.bench.results import BenchOutput, Row, headline

    result = measure(max(2, settings.rounds) if not settings.tiny else 2, ROOT / "serve_configs" / "local-tiny.yaml",
                     settings.workdir)
    rows = [Row(round=r["round"], target=side, metrics={k: v for k, v in r[side].items() if isinstance(v, (int, float))})
            for r in result["rounds"] for side in ("up", "stock")]
    summary = result["summary"]
    warm = result["rounds"][1:]
    return BenchOutput(rows=rows, headlines=[
        headline("up ready - stock vLLM ready, warm", [r["up_minus_stock_s"] for r in warm], "s", at_most=15),
        headline("up ready - stock vLLM ready, first start", result["rounds"][0]["up_minus_stock_s"], "s", at_most=15),
        headline("up ready, warm", [r["up"]["ready_s"] for r in warm], "s"),
        headline("stock vLLM ready, warm", [r["stock"]["ready_s"] for r in warm], "s"),
        headline("up: before vLLM starts (Ray, Serve), warm", summary.get("warm: up attribution.before_vllm_s (median)"), "s"),
        headline("up: vLLM's own start-up, warm", summary.get("warm: up attribution.vllm_s (median)"), "s"),
        headline("stock: vLLM's own start-up, warm", summary.get("warm: stock attribution.vllm_s (median)"), "s"),
    ], details={"summary": summary})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_configs" / "local-tiny.yaml",
                        help="serve config `up` runs (default: serve_configs/local-tiny.yaml, the stock server's model)")
    parser.add_argument("--name", default="bench_startup", help="results file: loadtests/results/<date>-<commit>-NAME.json")
    args = parser.parse_args()
    stop_on_sigterm()
    result = measure(args.rounds, args.config, Path(tempfile.mkdtemp(prefix="bench-startup-")))
    path = write_result(args.name, result)
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
