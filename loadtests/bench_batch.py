"""P4: batch throughput, ours vs a baseline in the same run, alternating rounds.

Offline: N prompts x T tokens through ``ray-serve-cai batch run`` (Ray Data, one vLLM ``LLM`` engine)
vs vLLM's own ``LLM.generate`` on the same prompts (its own process, same engine arguments). Both
report tokens/s once their engine is up -- the CLI's "after engine start" rate (from the first batch
reaching an engine to the last line written), ``LLM.generate``'s timed call -- since start-up is a
fixed cost the baseline does not pay inside its timer; the CLI's end-to-end rate is recorded too.

Online: the stack a README user starts (``ray-serve-cai up --tiny``: ``serve_configs/local-tiny.yaml``, batch at
its defaults) and its URL, the router's listener. The same prompts as an OpenAI batch vs the same
prompts sent at concurrency 64 by two clients: the lean keep-alive one of ``loadtests.client`` and
``httpx`` (one ``AsyncClient`` per worker, the transport the ``openai`` SDK uses). While the batch
runs, one interactive client sends small requests back to back; its p50 latency is reported next to
its p50 on the idle router.

    .venv/bin/python -m loadtests.bench_batch                       # P4 defaults: 2000 x 32, 6 rounds
    .venv/bin/python -m loadtests.bench_batch --prompts 64 --rounds 1 --name bench_batch_tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtests.client import Connection
from loadtests.output import write_result
from loadtests.paths import ROOT
from loadtests.processes import run_contained, stop_on_sigterm
from loadtests.upstack import UpStack, moved_to_free_ports

LOCAL_CONFIG = ROOT / "serve_configs" / "local-tiny.yaml"  # what the README starts (`ray-serve-cai up`), on the tiny model

BASELINE = """
import json, sys, time, os
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = sys.argv[4]  # "1": vLLM's default; "0": engine inline
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    prompts = json.load(open(sys.argv[1])); max_tokens = int(sys.argv[2])
    llm = LLM(model=sys.argv[3], enforce_eager=True)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up, like the pipeline's first block
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    print("RESULT " + json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}))
"""


def prompts(count: int) -> list[str]:
    return [f"Request {i}: write a short story about the number {i}." for i in range(count)]


def completion_body(text: str, max_tokens: int) -> dict[str, Any]:
    """One prompt's request: the same body whether it goes in the batch file or straight from a client."""
    return {"model": "tiny-chat", "prompt": text, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}


def batch_lines(texts: list[str], max_tokens: int) -> str:
    return "".join(json.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
                               "body": completion_body(text, max_tokens)}) + "\n" for i, text in enumerate(texts))


# ---------------------------------------------------------------------- offline

def offline_baseline(work: Path, texts: list[str], max_tokens: int, inline: bool = False) -> dict[str, Any]:
    """``LLM.generate`` as vLLM ships it, or (``inline``) with its engine in one process as the CLI runs
    it on CPU (serve_apps/batch/predictor.py, ``inline_engine_on_cpu``)."""
    from serve_apps.models import ensure_tiny_model

    source = work / "prompts.json"
    source.write_text(json.dumps(texts))
    out = run_contained([sys.executable, "-c", BASELINE, str(source), str(max_tokens), str(ensure_tiny_model()),
                         "0" if inline else "1"], 1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"LLM.generate baseline failed: {out.stderr[-1500:]}")


def offline_ours(work: Path, texts: list[str], max_tokens: int) -> dict[str, Any]:
    source, output, summary = work / "in.jsonl", work / f"out-{time.time_ns()}.jsonl", work / "summary.json"
    source.write_text(batch_lines(texts, max_tokens))
    # several blocks, so the rate after the first one (engine up) is measured over most of the work
    batch_size = max(16, min(256, len(texts) // 8))
    cmd = [sys.executable, "-m", "ray_serve_cai", "batch", "run", str(source), "-o", str(output),
           "--model", "builtin:tiny-chat", "--replicas", "1", "--batch-size", str(batch_size),
           "--summary-json", str(summary)]
    out = run_contained(cmd, 1800)
    if out.returncode != 0:
        raise RuntimeError(f"batch run failed: {out.stderr[-1500:]}")
    result = json.loads(summary.read_text())
    output.unlink()
    return {"tokens": result["output_tokens"], "seconds": result["seconds"],
            "tokens_per_second": result["steady_tokens_per_second"],
            "end_to_end_tokens_per_second": result["tokens_per_second"], "failed": result["failed"]}


# ---------------------------------------------------------------------- online

def start_stack(work: Path) -> tuple[UpStack, str]:
    """``ray-serve-cai up`` on the README's config (serve_configs/local.yaml: the router's listener is the
    front door, batch at its defaults), on free ports, with its batch files under ``work``."""
    config = moved_to_free_ports(LOCAL_CONFIG, work)
    raw = yaml.safe_load(config.read_text())
    raw["applications"][0]["args"]["batch"] = {"storage": str(work / "storage")}
    config.write_text(yaml.safe_dump(raw))
    stack = UpStack(config, work / "up.log")
    try:
        url = stack.wait_ready(900)  # up prints ready: once the engine has answered a first generation
    except Exception:
        stack.stop()
        raise
    return stack, url


async def lean_client_load(url: str, texts: list[str], max_tokens: int, concurrency: int) -> dict[str, Any]:
    """The prompts from ``concurrency`` workers, each on one keep-alive connection of the lean client."""
    host, port = url.split("//")[1].split(":")

    async def worker(queue: list[str], tally: dict[str, int]) -> None:
        connection = Connection(host, int(port))
        while queue:
            body = json.dumps(completion_body(queue.pop(), max_tokens)).encode()
            status, _, data = await connection.post("/v1/completions", body)
            count(tally, status, data)
        connection.close()

    return await timed_workers(worker, texts, concurrency)


async def httpx_client_load(url: str, texts: list[str], max_tokens: int, concurrency: int) -> dict[str, Any]:
    """The prompts from ``concurrency`` workers, each with its own ``httpx.AsyncClient`` (what the ``openai``
    SDK sends through)."""
    import httpx

    async def worker(queue: list[str], tally: dict[str, int]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            while queue:
                response = await client.post("/v1/completions", json=completion_body(queue.pop(), max_tokens))
                count(tally, response.status_code, response.content)

    return await timed_workers(worker, texts, concurrency)


def count(tally: dict[str, int], status: int, data: bytes) -> None:
    if status == 200:
        tally["tokens"] += json.loads(data)["usage"]["completion_tokens"]
    else:
        tally["errors"] += 1


async def timed_workers(worker: Any, texts: list[str], concurrency: int) -> dict[str, Any]:
    queue, tally = list(texts), {"tokens": 0, "errors": 0}
    start = time.perf_counter()
    await asyncio.gather(*(worker(queue, tally) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {**tally, "seconds": seconds, "tokens_per_second": tally["tokens"] / seconds}


async def interactive(url: str, stop: asyncio.Event) -> list[float]:
    """One user: small chat requests back to back until ``stop``; their latencies."""
    host, port = url.split("//")[1].split(":")
    connection = Connection(host, int(port))
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
    latencies = []
    while not stop.is_set():
        start = time.perf_counter()
        status, _, _ = await connection.post("/v1/chat/completions", body)
        if status == 200:
            latencies.append(time.perf_counter() - start)
    connection.close()
    return latencies


async def batch_load(url: str, texts: list[str], max_tokens: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        files = {"file": ("bench.jsonl", batch_lines(texts, max_tokens).encode())}
        file_id = (await client.post("/v1/files", files=files, data={"purpose": "batch"})).json()["id"]
        stop = asyncio.Event()
        user = asyncio.create_task(interactive(url, stop))
        start = time.perf_counter()
        batch = (await client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions",
                                                        "completion_window": "24h"})).json()
        created = time.perf_counter() - start
        timeline = [(round(created, 3), batch["status"], batch["request_counts"]["completed"])]
        while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(0.05)
            batch = (await client.get(f"/v1/batches/{batch['id']}")).json()
            state = (batch["status"], batch["request_counts"]["completed"])
            if state != timeline[-1][1:]:  # where the time goes: start-up, progress, finalising
                timeline.append((round(time.perf_counter() - start, 3), *state))
        seconds = time.perf_counter() - start
        stop.set()
        latencies = await user
        tokens = 0
        if batch.get("output_file_id"):
            content = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).text
            tokens = sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
                         for line in content.splitlines() if line)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "status": batch["status"],
            "request_counts": batch["request_counts"],
            "interactive_p50_ms": statistics.median(latencies) * 1000 if latencies else None,
            "interactive_requests": len(latencies), "timeline_s_status_completed": timeline}


async def idle_latency(url: str, seconds: float = 5.0) -> float:
    stop = asyncio.Event()
    task = asyncio.create_task(interactive(url, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return statistics.median(await task) * 1000


# ---------------------------------------------------------------------- main

def ratio_summary(rounds: list[dict[str, Any]], ours: str, baseline: str) -> dict[str, Any]:
    ratios = [r[ours]["tokens_per_second"] / r[baseline]["tokens_per_second"] for r in rounds]
    return {"median_ratio": statistics.median(ratios), "ratios": ratios,
            "median_ours_tps": statistics.median(r[ours]["tokens_per_second"] for r in rounds),
            "median_baseline_tps": statistics.median(r[baseline]["tokens_per_second"] for r in rounds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per part (default 6)")
    parser.add_argument("--concurrency", type=int, default=64, help="online clients' concurrency (the batch runs at the router's default)")
    parser.add_argument("--part", choices=["offline", "online", "both"], default="both")
    parser.add_argument("--name", default="bench_batch_p4", help="results file: loadtests/results/<date>-<commit>-NAME.json")
    args = parser.parse_args()
    stop_on_sigterm()
    texts = prompts(args.prompts)
    result: dict[str, Any] = {"prompts": args.prompts, "max_tokens": args.max_tokens, "rounds": args.rounds,
                              "concurrency": args.concurrency, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        if args.part in ("offline", "both"):
            rounds = []
            sides = {"baseline": lambda: offline_baseline(work, texts, args.max_tokens),
                     "baseline_inline": lambda: offline_baseline(work, texts, args.max_tokens, inline=True),
                     "ours": lambda: offline_ours(work, texts, args.max_tokens)}
            for number in range(args.rounds):
                order = list(sides) if number % 2 == 0 else list(reversed(sides))
                entry: dict[str, Any] = {"order": order}
                for side in order:
                    entry[side] = sides[side]()
                    time.sleep(3)  # vLLM's worker busy-polls for ~1 s after its last work
                rounds.append(entry)
                write_result(args.name, {**result, "offline": {"rounds": rounds, "partial": True}})  # a cut-off run keeps its rounds
                print(f"offline round {number + 1}: ours {entry['ours']['tokens_per_second']:.0f} tok/s, "
                      f"LLM.generate {entry['baseline']['tokens_per_second']:.0f} tok/s, with its engine inline "
                      f"{entry['baseline_inline']['tokens_per_second']:.0f} tok/s", flush=True)
            # the target is against LLM.generate as vLLM ships it; the inline ratio is the pipeline's own cost
            result["offline"] = {"rounds": rounds, **ratio_summary(rounds, "ours", "baseline"),
                                 "inline": ratio_summary(rounds, "ours", "baseline_inline")}
            print(f"offline median ratio {result['offline']['median_ratio']:.3f} (target >= 0.90); against "
                  f"LLM.generate with its engine inline {result['offline']['inline']['median_ratio']:.3f}", flush=True)
        if args.part in ("online", "both"):
            stack, url = start_stack(work)
            try:
                idle = asyncio.run(idle_latency(url))
                rounds = []
                sides = {"client": lambda: lean_client_load(url, texts, args.max_tokens, args.concurrency),
                         "client_httpx": lambda: httpx_client_load(url, texts, args.max_tokens, args.concurrency),
                         "batch": lambda: batch_load(url, texts, args.max_tokens)}
                for number in range(args.rounds):
                    order = list(sides) if number % 2 == 0 else list(reversed(sides))
                    entry = {"order": order}
                    for side in order:
                        entry[side] = asyncio.run(sides[side]())
                        time.sleep(3)
                    rounds.append(entry)
                    write_result(args.name, {**result, "online": {"url": url, "rounds": rounds,
                                                                  "idle_interactive_p50_ms": idle, "partial": True}})
                    print(f"online round {number + 1}: batch {entry['batch']['tokens_per_second']:.0f} tok/s, client "
                          f"c={args.concurrency} {entry['client']['tokens_per_second']:.0f} tok/s (lean), "
                          f"{entry['client_httpx']['tokens_per_second']:.0f} tok/s (httpx), interactive p50 "
                          f"{entry['batch']['interactive_p50_ms']:.0f} ms (idle {idle:.0f} ms)", flush=True)
                # the target is against the faster client; the httpx ratio is what an openai-SDK user compares with
                result["online"] = {"url": url, "rounds": rounds, "idle_interactive_p50_ms": idle,
                                    "interactive_p50_ms_during_batch": statistics.median(
                                        r["batch"]["interactive_p50_ms"] for r in rounds),
                                    **ratio_summary(rounds, "batch", "client"),
                                    "httpx": ratio_summary(rounds, "batch", "client_httpx")}
                print(f"online median ratio {result['online']['median_ratio']:.3f} against the lean client (target "
                      f">= 0.95); against httpx {result['online']['httpx']['median_ratio']:.3f}", flush=True)
            finally:
                stack.stop()
    path = write_result(args.name, result)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
