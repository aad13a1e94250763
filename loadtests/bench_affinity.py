"""Does ``routing: prefix_affinity`` raise the engines' prefix-cache hit rate and lower TTFT against
``least_outstanding``, and what does it cost the router?

One Ray cluster, one router app with two vLLM engine replicas of the tiny model and two ``serve``
backends on them: ``affinity`` (prefix_affinity) and ``least`` (least_outstanding); the client picks one
with ``x-backend`` on the router's own listener. A phase runs ``--conversations`` multi-turn chats at
once, all sharing one system prompt of ``--system-tokens`` tokens (sized with the model's own
tokenizer), ``--turns`` turns each, streamed; each phase starts from a system prompt no engine has
seen. Rounds alternate which mode goes first. Per phase: prefix-cache hit rate from both replicas'
``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (read from each worker's ``/metrics``),
TTFT p50/p95 (time to the first streamed bytes), router CPU per request (``/proc``), and how the
requests split over the replicas (the engines' ``vllm:request_success``).

    .venv/bin/python -m loadtests.bench_affinity [--rounds 6] [--tiny]

``run`` is the same measurement for ``ray-serve-cai bench`` (benchmark ``affinity``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from launchers.local import LocalCluster, free_port
from launchers.polling import PollTimeout, poll_until
from loadtests.client import Connection, split_url
from loadtests.engine_workers import vllm_counters, worker_endpoints
from loadtests.output import write_result
from loadtests.paths import ROOT
from loadtests.processes import cpu_seconds, stop_on_sigterm
from loadtests.servers import wait_http
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline

MODES = {"affinity": "prefix_affinity", "least": "least_outstanding"}
ROUTER_PROCESS = "ServeReplica:router:MultiBackendRouter"
WORDS = ("policy", "deploy", "replica", "token", "cache", "request", "budget", "latency", "answer", "cluster",
         "review", "summary", "customer", "invoice", "ticket", "priority", "escalate", "schedule", "refund",
         "account", "contract", "service", "incident", "report", "team", "owner", "region", "quota")


def sized_prompt(tokenizer: Any, tokens: int, salt: str) -> str:
    """Instructions of exactly ``tokens`` tokens (the model's own tokenizer), starting with ``salt``."""
    rng = random.Random(7)
    words = [f"Session {salt}. You are the support assistant. Rules:"]
    while len(tokenizer.encode(" ".join(words)).ids) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(20))
    text = " ".join(words)
    ids = tokenizer.encode(text).ids[:tokens]
    return tokenizer.decode(ids)


async def conversation(url: str, backend: str, system: str, index: int, turns: int, max_tokens: int,
                       ttfts: list[float], errors: list[str]) -> None:
    host, port, prefix = split_url(url)
    connection = Connection(host, port)
    messages = [{"role": "system", "content": system}]
    try:
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Customer {index}, question {turn}: what about my ticket?"})
            body = json.dumps({"model": "tiny-chat", "messages": messages, "max_tokens": max_tokens, "stream": True,
                               "ignore_eos": True, "temperature": 0}).encode()
            status, _, data, ttft = await connection.post_timed(prefix + "/v1/chat/completions", body, {"x-backend": backend})
            if status != 200 or not data.rstrip().endswith(b"data: [DONE]"):
                errors.append(f"{status}: {data[:200]!r}")
                return
            ttfts.append(ttft)
            text = []
            for line in data.split(b"\n"):
                if line.startswith(b"data: {"):
                    for choice in json.loads(line[6:]).get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or "")
            messages.append({"role": "assistant", "content": "".join(text)})
    finally:
        connection.close()


def replica_counters(tokens: dict[str, str]) -> dict[str, dict[str, float]]:
    return {url: vllm_counters(url, token) for url, token in tokens.items()}


def phase(url: str, backend: str, systems: list[str], args: argparse.Namespace, tokens: dict[str, str]) -> dict[str, Any]:
    before, cpu_before = replica_counters(tokens), cpu_seconds(ROUTER_PROCESS)
    ttfts: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()

    async def run() -> None:
        await asyncio.gather(*(conversation(url, backend, systems[i % len(systems)], i, args.turns, args.max_tokens,
                                            ttfts, errors) for i in range(args.conversations)))

    asyncio.run(run())
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(ROUTER_PROCESS) - cpu_before
    after = replica_counters(tokens)
    delta = {u: {k: after[u][k] - before[u][k] for k in after[u]} for u in tokens}
    queries = sum(d["vllm:prefix_cache_queries"] for d in delta.values())
    hits = sum(d["vllm:prefix_cache_hits"] for d in delta.values())
    ordered = sorted(ttfts)
    requests = len(ttfts) + len(errors)
    return {"backend": backend, "requests": requests, "errors": len(errors), "error_samples": errors[:3],
            "elapsed_s": round(elapsed, 2), "hit_rate": hits / queries if queries else None,
            "prefix_cache_queries": queries, "prefix_cache_hits": hits,
            "ttft_p50_ms": ordered[len(ordered) // 2] * 1000 if ordered else None,
            "ttft_p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000 if ordered else None,
            "router_cpu_ms_per_request": cpu / requests * 1000 if requests else None,
            "per_replica_requests": sorted(d["vllm:request_success"] for d in delta.values())}


def wait_endpoints(router: str, timeout: float) -> None:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(router + "/v1/backends", timeout=5) as response:
                data = json.loads(response.read())["data"]
        except OSError:
            return False
        return all(b["healthy"] and len(b["endpoints"]) == 2 for b in data)

    try:
        poll_until(ready, timeout, 2.0)
    except PollTimeout:
        raise TimeoutError("the two engine replicas never published their endpoints to both backends") from None


def check_context(args: argparse.Namespace, model_dir: Path) -> int:
    limit = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    # chat template ~10 tokens per message, user turns ~20 tokens
    needed = args.system_tokens + 10 + args.turns * (30 + args.max_tokens + 10)
    if needed > limit:
        raise SystemExit(f"--system-tokens {args.system_tokens} with {args.turns} turns needs ~{needed} tokens; "
                         f"the model's context is {limit}")
    return limit


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(mode: str, key: str) -> float | None:
        values = [r[mode][key] for r in rounds if r[mode][key] is not None]
        return statistics.median(values) if values else None

    def ratio(key: str) -> list[float]:
        return [r["affinity"][key] / r["least"][key] for r in rounds if r["affinity"][key] and r["least"][key]]

    summary: dict[str, Any] = {}
    for mode in MODES:
        for key in ("hit_rate", "ttft_p50_ms", "ttft_p95_ms", "router_cpu_ms_per_request"):
            summary[f"{mode}_{key}_median"] = median(mode, key)
        summary[f"{mode}_errors"] = sum(r[mode]["errors"] for r in rounds)
    for key, target in (("hit_rate", ">= 2.0"), ("ttft_p50_ms", "<= 1.0"), ("ttft_p95_ms", None),
                        ("router_cpu_ms_per_request", "<= 1.10")):
        values = ratio(key)
        summary[f"{key}_ratio_rounds"] = values
        summary[f"{key}_ratio_median"] = statistics.median(values) if values else None
        if target:
            summary[f"{key}_ratio_target"] = target
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (each: one phase per mode)")
    parser.add_argument("--conversations", type=int, default=32, help="concurrent conversations per phase")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation")
    parser.add_argument("--system-tokens", type=int, default=1500, help="shared system prompt, in the model's tokens")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (ignore_eos)")
    parser.add_argument("--spill-margin", type=int, default=4, help="affinity.spill_margin of the affinity backend")
    parser.add_argument("--block-size", type=int, default=128, help="affinity.block_size (prompt bytes per block)")
    parser.add_argument("--engine-block-size", type=int, default=32,
                        help="vLLM KV-cache block (tokens); vLLM's CPU default of 128 caches a conversation's "
                             "own turns only once they fill a block; 0 = vLLM's default")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between phases (vLLM busy-polls after work)")
    parser.add_argument("--distinct", action="store_true",
                        help="each conversation its own system prompt (many long prefixes) instead of one shared")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke setting: 1 round, 4 conversations x 2 turns, 200-token system prompt")
    parser.add_argument("--output", default="bench_affinity", help="results file: loadtests/results/<date>-<commit>-NAME.json")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.rounds, args.conversations, args.turns, args.system_tokens = 1, 4, 2, 200
        if args.output == "bench_affinity":
            args.output = "bench_affinity_tiny"
    return args


def measure(args: argparse.Namespace, workdir: Path, on_round: Callable[[int, list[dict[str, Any]]], Any] | None = None
            ) -> tuple[list[dict[str, Any]], int]:
    """Start the cluster, run the rounds, stop it: every round's phases and the model's context length;
    ``on_round(context, rounds)`` after every round (a late failure keeps what was measured)."""
    from tokenizers import Tokenizer

    from serve_apps.models import ensure_tiny_model

    model_dir = Path(ensure_tiny_model())
    context = check_context(args, model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cluster = LocalCluster(extra_env={"PYTHONPATH": str(ROOT)}, log_path=workdir / "ray.log")
    port, listen = free_port(), free_port()
    router = f"http://127.0.0.1:{listen}"
    backends = [{"name": name, "kind": "serve", "engine": "tiny-chat", "routing": routing,
                 "timeouts": {"first_byte": 120, "idle": 60},
                 **({"affinity": {"spill_margin": args.spill_margin, "block_size": args.block_size}}
                    if routing == "prefix_affinity" else {})}
                for name, routing in MODES.items()]
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
         "runtime_env": {"env_vars": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}}, "args": {
             "engines": [{"name": "tiny-chat", "model": "builtin:tiny-chat", "kv_cache_gb": 1, "num_replicas": 2,
                          "max_ongoing_requests": 256,
                          "engine_kwargs": {"block_size": args.engine_block_size} if args.engine_block_size else {}}],
             "backends": backends, "router": {"listen": {"port": listen}}}}]}
    (workdir / "serve.yaml").write_text(yaml.safe_dump(config))
    rounds: list[dict[str, Any]] = []
    print(f"system prompt {args.system_tokens} tokens, {args.turns} turns x {args.max_tokens} tokens, "
          f"context {context}", flush=True)
    cluster.start()
    try:
        cluster.deploy(workdir / "serve.yaml")
        wait_http(router + "/health", 900)
        wait_endpoints(router, 900)
        tokens = worker_endpoints(cluster.env(), "router", "engine-tiny-chat")
        if len(tokens) != 2:
            raise RuntimeError(f"expected two engine workers, met {len(tokens)}")
        for mode in MODES:  # warm-up, not recorded: first requests pay for lazy initialisation
            warm = argparse.Namespace(**{**vars(args), "conversations": 2, "turns": 1})
            phase(router, mode, [sized_prompt(tokenizer, 64, f"warm-{mode}")], warm, tokens)
        for index in range(args.rounds):
            order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
            result: dict[str, Any] = {"round": index, "order": order}
            for mode in order:
                time.sleep(args.pause)
                salt = f"{index}-{mode}-{time.time_ns()}"
                systems = [sized_prompt(tokenizer, args.system_tokens, f"{salt}-{i}")
                           for i in range(args.conversations if args.distinct else 1)]
                result[mode] = phase(router, mode, systems, args, tokens)
                r = result[mode]
                print(f"round {index} {mode:8} hit rate {_fmt(r['hit_rate'], 3)}  TTFT p50 {_fmt(r['ttft_p50_ms'])} ms "
                      f"p95 {_fmt(r['ttft_p95_ms'])} ms  router CPU {_fmt(r['router_cpu_ms_per_request'], 3)} ms/req  "
                      f"replicas {r['per_replica_requests']}  errors {r['errors']}", flush=True)
            rounds.append(result)
            if on_round is not None:
                on_round(context, rounds)
    finally:
        cluster.stop()
    return rounds, context


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    rounds, context = measure(args, Path(tempfile.mkdtemp(prefix="bench-affinity-")),
                              on_round=lambda context, rounds: save(args, context, rounds))
    for key, value in summarise(rounds).items():
        print(f"{key}: {value}")
    print(f"wrote {save(args, context, rounds)}")


def run(settings: BenchSettings) -> BenchOutput:
    """The standalone defaults (``--tiny``'s with ``settings.tiny``) over ``settings.rounds`` rounds."""
    args = parse_args(["--tiny"] if settings.tiny else ["--rounds", str(settings.rounds)])
    rounds, context = measure(args, settings.workdir)
    summary = summarise(rounds)
    rows = [Row(round=r["round"], target=MODES[mode], metrics={
        k: v for k, v in r[mode].items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for r in rounds for mode in MODES]
    vs = "prefix_affinity / least_outstanding"
    return BenchOutput(rows=rows, headlines=[
        headline(f"prefix-cache hit rate, {vs}", summary["hit_rate_ratio_rounds"], at_least=2.0),
        headline(f"TTFT p50, {vs}", summary["ttft_p50_ms_ratio_rounds"], at_most=1.0),
        headline(f"TTFT p95, {vs}", summary["ttft_p95_ms_ratio_rounds"]),
        headline(f"router CPU per request, {vs}", summary["router_cpu_ms_per_request_ratio_rounds"], at_most=1.1),
        headline("prefix_affinity prefix-cache hit rate", summary["affinity_hit_rate_median"]),
        headline("least_outstanding prefix-cache hit rate", summary["least_hit_rate_median"]),
        headline("prefix_affinity TTFT p50", summary["affinity_ttft_p50_ms_median"], "ms"),
        headline("least_outstanding TTFT p50", summary["least_ttft_p50_ms_median"], "ms")],
        details={"conversations": args.conversations, "turns": args.turns, "system_tokens": args.system_tokens,
                 "max_tokens": args.max_tokens, "context_tokens": context,
                 "errors": {mode: summary[f"{mode}_errors"] for mode in MODES}})


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def save(args: argparse.Namespace, context: int, rounds: list[dict[str, Any]]) -> Path:
    return write_result(args.output, {
        "summary": summarise(rounds), "rounds": rounds,
        "settings": {k: v for k, v in vars(args).items() if k != "output"} | {"context_tokens": context},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


if __name__ == "__main__":
    main()
