"""P1: the URL the README gives against a stock vLLM server on the same model, as users run both.

Starts the local stack exactly as a user does (``ray-serve-cai up``, which prints the URL to use) and a
stock ``python -m vllm.entrypoints.openai.api_server`` on the same built tiny model (``--enforce-eager``,
``VLLM_CPU_KVCACHE_SPACE=1``), then runs, in alternating rounds (the order flips every round), with
two clients -- ``httpx`` (one ``AsyncClient`` per worker: the transport the ``openai`` SDK uses) and the
lean raw-socket client of ``loadtests.client`` and ``loadtests.streamload``:

- ``streams``: ``--streams`` concurrent chat streams x ``--tokens`` tokens (ignore_eos): tokens/s, TTFT;
- ``short``: concurrency 64, ``max_tokens`` 1, for ``--seconds``: requests/s;
- ``c1``: concurrency 1, ``max_tokens`` 1, every target request by request in turn: median latency.

``--also CONFIG`` starts a second stack (ports moved) as a third target: how this door compares with
another design, e.g. the previous release's local config, in the same run.

Around every run it reads the CPU time of each target's process tree from /proc, so the results say
where the CPU went (per process) as well as how fast it was. Also records how long ``up`` took to
print ``ready:`` and to exit after SIGTERM, and whether any process outlived it. Loopback only;
bounded in time; everything it starts is stopped, also on Ctrl-C / SIGTERM.

    .venv/bin/python -m loadtests.bench_frontdoor [--rounds 6] [--config serve_configs/local-tiny.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from launchers.procs import descendants
from loadtests.client import chat_body
from loadtests.load import closed_loop, interleaved
from loadtests.output import write_result
from loadtests.paths import ROOT
from loadtests.processes import process_cpu_seconds, stop_on_sigterm
from loadtests.servers import start_vllm
from loadtests.streamload import StreamTally, lean_streams, timed_streams
from loadtests.upstack import UpStack, moved_to_free_ports, process_name

if TYPE_CHECKING:
    from ray_serve_cai.bench.results import BenchOutput, BenchSettings

CLIENTS = ("httpx", "lean")


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``root`` and every process below it, by process name."""
    out: dict[str, float] = {}
    for pid in [root, *descendants(root)]:
        seconds = process_cpu_seconds(pid)
        if seconds is not None:
            name = process_name(pid).split(" --")[0][:48] or str(pid)
            out[name] = out.get(name, 0.0) + seconds
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after if after[k] - before.get(k, 0.0) > 0.0005}


async def httpx_streams(url: str, concurrency: int, tokens: int, per_worker: int = 1,
                        model: str = "tiny-chat") -> dict[str, Any]:
    body = chat_body(tokens, stream=True, model=model)
    tally = StreamTally()

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            for _ in range(per_worker):
                sent = time.perf_counter()
                first = None
                data = bytearray()
                try:
                    async with client.stream("POST", "/v1/chat/completions", content=body,
                                             headers={"content-type": "application/json"}) as response:
                        async for chunk in response.aiter_bytes():
                            first = first or time.perf_counter()
                            data += chunk
                        status = response.status_code
                except httpx.HTTPError:
                    tally.errors += 1
                    continue
                tally.add(status, bytes(data), (first or sent) - sent)

    return await timed_streams(worker, concurrency, tally)


async def httpx_short(url: str, concurrency: int, seconds: float, model: str = "tiny-chat") -> dict[str, Any]:
    body = chat_body(1, stream=False, model=model)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while (sent := time.perf_counter()) < stop_at:
                try:
                    response = await client.post("/v1/chat/completions", content=body,
                                                 headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rps": len(latencies) / elapsed, "requests": len(latencies), "errors": errors,
            "median_ms": statistics.median(latencies) * 1000 if latencies else None}


async def one_run(workload: str, client: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    if workload == "streams":
        run = httpx_streams if client == "httpx" else lean_streams
        return await run(url, args.streams, args.tokens, per_worker=args.per_worker, model=args.engine.name)
    if client == "httpx":
        return await httpx_short(url, 64, args.seconds, model=args.engine.name)
    return await closed_loop(url, chat_body(1, stream=False, model=args.engine.name), 64, args.seconds, warmup=0.0)


def ratio(rounds: list[dict[str, Any]], workload: str, client: str, key: str, target: str) -> dict[str, Any]:
    values = [r[workload][client][target][key] / r[workload][client]["stock"][key] for r in rounds
              if r[workload][client]["stock"].get(key)]
    return {"median": statistics.median(values) if values else None, "rounds": [round(v, 3) for v in values]}


def cpu_per_unit(rounds: list[dict[str, Any]], workload: str, client: str, target: str) -> float | None:
    """Median CPU microseconds per token (streams) or request (short) of the target's serving process
    (the stock API server, or the replica that runs router and engine), engine core and workers excluded."""
    values = []
    for r in rounds:
        run = r[workload][client][target]
        units = run.get("tokens") or run.get("requests")
        serving = sum(v for k, v in run["cpu_s"].items() if not k.startswith("VLLM::") and
                      ("vllm.entrypoints" in k or "ServeReplica" in k))
        if units:
            values.append(serving / units * 1e6)
    return round(statistics.median(values), 1) if values else None


def summarise(rounds: list[dict[str, Any]], c1: dict[str, Any], doors: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for door in doors:
        for client in CLIENTS:
            summary[f"{door}: streams tok/s ratio ({client})"] = ratio(rounds, "streams", client, "tokens_per_s", door)
            summary[f"{door}: short req/s ratio ({client})"] = ratio(rounds, "short", client, "rps", door)
        added = [r[door]["median_ms"] - r["stock"]["median_ms"] for r in c1["rounds"]
                 if r[door]["median_ms"] and r["stock"]["median_ms"]]
        summary[f"{door}: c1 added ms (median)"] = statistics.median(added) if added else None
    for target in ["stock", *doors]:
        for client in CLIENTS:
            ttfts = [r["streams"][client][target]["ttft_median_ms"] for r in rounds]
            summary[f"{target}: streams TTFT p50 ms ({client})"] = statistics.median([t for t in ttfts if t] or [0])
        summary[f"{target}: serving-process CPU us/token (streams, lean)"] = cpu_per_unit(rounds, "streams", "lean", target)
        summary[f"{target}: serving-process CPU us/request (short, lean)"] = cpu_per_unit(rounds, "short", "lean", target)
    summary["errors"] = sum(run["errors"] for r in rounds for w in ("streams", "short") for by_client in r[w].values()
                            for run in by_client.values()) + sum(v["errors"] for r in c1["rounds"] for v in r.values())
    return summary


async def bench(args: argparse.Namespace, targets: dict[str, tuple[str, int]]) -> dict[str, Any]:
    rounds = []
    for number in range(args.rounds):
        names = list(targets)
        order = names[number % len(names):] + names[:number % len(names)]  # each target leads in turn
        if number % 2:
            order.reverse()
        result: dict[str, Any] = {"round": number, "order": order}
        for workload in ("streams", "short"):
            result[workload] = {}
            for client in CLIENTS:
                result[workload][client] = {}
                for target in order:
                    url, pid = targets[target]
                    before = tree_cpu(pid)
                    run = await one_run(workload, client, url, args)
                    run["cpu_s"] = cpu_delta(before, tree_cpu(pid))
                    result[workload][client][target] = run
                    print(f"round {number} {workload:7s} {client:5s} {target:9s} "
                          + " ".join(f"{k}={v:.1f}" for k, v in run.items() if isinstance(v, float)), flush=True)
        rounds.append(result)
    c1_rounds = []
    for number in range(args.rounds):
        pair = {name: (url, None) for name, (url, _) in targets.items()}
        c1_rounds.append(await interleaved(pair, chat_body(1, stream=False, model=args.engine.name), args.seconds,
                                           warmup=0.5))
        print(f"c1 round {number}: " + ", ".join(f"{t}={v['median_ms']:.2f} ms" for t, v in c1_rounds[-1].items()),
              flush=True)
    c1 = {"rounds": c1_rounds}
    return {"rounds": rounds, "c1": c1, "summary": summarise(rounds, c1, [t for t in targets if t != "stock"])}


def options(**overrides: Any) -> argparse.Namespace:
    """The command line's defaults, with ``overrides``: what ``run`` passes instead of argv."""
    args = parser().parse_args([])
    vars(args).update(overrides)
    return args


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per workload (default 6)")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_configs" / "local-tiny.yaml",
                        help="serve config `up` runs (default: serve_configs/local-tiny.yaml: the README's stack on the tiny model)")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams (default 64)")
    parser.add_argument("--per-worker", type=int, default=4, help="streams each worker runs in turn (default 4)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream (default 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a short / c1 run (default 5)")
    parser.add_argument("--also", type=Path, action="append", default=[], metavar="CONFIG",
                        help="also start `up` on this config (ports moved to free ones) and measure its door as a "
                             "third target, e.g. the previous release's serve_configs/local.yaml")
    parser.add_argument("--name", default="bench_frontdoor", help="results file: loadtests/results/<date>-<commit>-NAME.json")
    return parser


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start every stack and the stock server, run the rounds, stop everything; the results dict. The stock
    server serves the model of ``args.config``'s first engine, with its served name and dtype."""
    from serve_apps.checks import engine_configs

    args.engine = engine_configs(yaml.safe_load(args.config.read_text()))[0]
    stacks: dict[str, UpStack] = {}
    stock = None
    up_facts: dict[str, Any] = {}
    try:
        configs = {"frontdoor": args.config, **{f"also-{p.stem}": moved_to_free_ports(p, workdir) for p in args.also}}
        targets = {}
        for name, config in configs.items():  # one after another: start-up times are measured
            stacks[name] = UpStack(config, workdir / f"up-{name}.log")
            url = stacks[name].wait_ready(900)
            print(f"{name}: up ready in {stacks[name].startup_s:.1f} s at {url}", flush=True)
            targets[name] = (url, stacks[name].process.pid)
        started = time.perf_counter()
        stock = start_vllm(workdir / "vllm.log", timeout=600, engine=args.engine)
        up_facts["stock_vllm_startup_s"] = time.perf_counter() - started  # to /health 200, for comparison
        print(f"stock vLLM at {stock.url}, up in {up_facts['stock_vllm_startup_s']:.1f} s", flush=True)
        result = asyncio.run(bench(args, {"stock": (stock.url, stock.process.pid), **targets}))
    finally:
        if stock is not None:
            stock.kill(signal.SIGTERM)
        for name, stack in stacks.items():
            up_facts[name] = {"startup_s": stack.startup_s, "startup_phases": stack.phases, **stack.stop()}
            print(f"{name}: ready in {stack.startup_s:.1f} s, teardown {up_facts[name]['teardown_s'] or 0:.1f} s, "
                  f"leftover processes: {up_facts[name]['leftover'] or 'none'}", flush=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "engine"} | {
        "also": [str(p) for p in args.also], "engine": args.engine.model_dump(include={"name", "model", "dtype"})}
    result.update(up=up_facts, settings=settings,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores=os.cpu_count())
    return result


def run(settings: BenchSettings) -> BenchOutput:
    """``ray-serve-cai bench --only p1``: the README's door on the tiny model against stock vLLM."""
    return _run(settings, ROOT / "serve_configs" / "local-tiny.yaml")


def run_real(settings: BenchSettings) -> BenchOutput:
    """``ray-serve-cai bench --only p1-real``: the same on the quick-start model (``up``'s default config)."""
    return _run(settings, ROOT / "serve_configs" / "local.yaml")


def _run(settings: BenchSettings, config: Path) -> BenchOutput:
    from ray_serve_cai.bench.results import BenchOutput, Row, headline

    tiny = dict(streams=8, per_worker=1, tokens=16, seconds=2.0) if settings.tiny else {}
    result = measure(options(rounds=settings.rounds, config=config, **tiny), settings.workdir)
    rows = [Row(round=r["round"], target=f"{target} {workload} ({client})",
                metrics={k: v for k, v in run.items() if isinstance(v, (int, float))})
            for r in result["rounds"] for workload in ("streams", "short") for client in CLIENTS
            for target, run in r[workload][client].items()]
    rows += [Row(round=number, target=f"{target} c1", metrics={k: v for k, v in run.items() if isinstance(v, (int, float))})
             for number, r in enumerate(result["c1"]["rounds"]) for target, run in r.items()]
    summary, up = result["summary"], result["up"]["frontdoor"]
    stock_ttft = summary["stock: streams TTFT p50 ms (httpx)"]
    return BenchOutput(rows=rows, headlines=[
        headline("front door streams tok/s / stock (httpx)", summary["frontdoor: streams tok/s ratio (httpx)"]["rounds"],
                 at_least=0.95),
        headline("front door c=64 req/s / stock (httpx)", summary["frontdoor: short req/s ratio (httpx)"]["rounds"],
                 at_least=0.90),
        headline("front door c=1 added latency", summary["frontdoor: c1 added ms (median)"], "ms", at_most=2),
        headline("front door streams TTFT p50 (httpx)", summary["frontdoor: streams TTFT p50 ms (httpx)"], "ms",
                 at_most=round(stock_ttft * 1.15, 1)),
        headline("client errors", summary["errors"], at_most=0),
        headline("up to ready", up["startup_s"], "s", at_most=45),
        headline("teardown after SIGTERM", up["teardown_s"], "s", at_most=15),
    ], details={"up": result["up"], "summary": summary})


def main() -> int:
    args = parser().parse_args()
    stop_on_sigterm()
    result = measure(args, Path(tempfile.mkdtemp(prefix="bench-frontdoor-")))
    path = write_result(args.name, result)
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
