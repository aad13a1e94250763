"""``ray-serve-cai batch run``: an OpenAI batch input file through vLLM engines on Ray Data, offline."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    batch = subparsers.add_parser("batch", help="offline batch inference (OpenAI batch files) on Ray")
    actions = batch.add_subparsers(dest="batch_command", metavar="<action>")
    actions.required = True
    run = actions.add_parser(
        "run",
        help="run an OpenAI batch input file through vLLM engines on Ray Data",
        description="Read IN (JSONL lines {custom_id, method: POST, url: /v1/chat/completions or "
        "/v1/completions, body}), generate with --replicas vLLM engines in a Ray Data actor pool, and "
        "append OpenAI batch output lines ({id, custom_id, response: {status_code, request_id, body}, "
        "error}) to OUT, successes and per-line errors alike. Every line is checked before any engine "
        "starts. Killed or interrupted, run it again with --resume: lines already in OUT are skipped, "
        "nothing is written twice. Without --address it starts a private Ray instance on 127.0.0.1 "
        "that ends with the command, however the command ends (SIGKILL included).",
    )
    run.add_argument("input", metavar="IN",
                     help="batch input file (JSONL): a path, or a URI every cluster node can read with --address")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output file (JSONL)")
    run.add_argument("--model", required=True, help="model directory, hub id, or builtin:NAME (see `ray-serve-cai model list`)")
    run.add_argument("--served-name", default=None,
                     help="the name requests' `model` must use (default: the model's name, e.g. tiny-chat)")
    run.add_argument("--engine", default="vllm", choices=["vllm"], help="inference engine (default: vllm)")
    run.add_argument("--replicas", type=int, default=1, help="engine replicas in the actor pool (default: 1)")
    run.add_argument("--batch-size", type=int, default=256, help="requests per engine call (default: 256)")
    run.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per engine (default: 1)")
    run.add_argument("--cpu-threads", type=int, default=None, metavar="N",
                     help="compute threads per engine on CPU (default: the machine's cores / --replicas; "
                     "with --address, --cpus-per-replica). The engine runs inline in its replica on CPU; "
                     "set VLLM_ENABLE_V1_MULTIPROCESSING=1 for vLLM's separate scheduler process")
    run.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV cache per engine on CPU (default: 1)")
    run.add_argument("--engine-kwargs", type=json.loads, default={}, metavar="JSON",
                     help='extra vLLM LLM(...) arguments as JSON, e.g. \'{"max_model_len": 2048}\'')
    run.add_argument("--resume", action="store_true", help="continue OUT: skip custom_ids it already holds")
    run.add_argument("--address", default=None,
                     help="an existing Ray cluster (host:6379 or ray://host:10001) instead of a private one")
    run.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                     help="also write the run's counts and throughput to FILE as JSON")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ray_serve_cai.cli import CLIError

    if args.replicas < 1 or args.batch_size < 1 or (args.cpu_threads is not None and args.cpu_threads < 1):
        raise CLIError("--replicas, --batch-size and --cpu-threads must be at least 1", 2)
    if not isinstance(args.engine_kwargs, dict):
        raise CLIError("--engine-kwargs must be a JSON object", 2)
    if args.address is None:
        from launchers.local import AUTH_ENV, LOOPBACK_ENV, SCHEDULING_ENV
        from launchers.reaper import guard

        # SCHEDULING_ENV: the engines are the work, so they run at the same niceness as the CLI and
        # Ray's daemons, not below them (Ray's default of 15; see launchers/local.py)
        for key, value in {**LOOPBACK_ENV, **AUTH_ENV, **SCHEDULING_ENV}.items():
            os.environ.setdefault(key, value)
        guard()  # the private Ray instance dies with this process, even when it is SIGKILLed
    from tqdm import tqdm

    from serve_apps.batch.offline import OfflineError, OfflineJob, check_input, run

    job = OfflineJob(input=str(args.input), output=args.output, model=args.model, served_name=args.served_name,
                     replicas=args.replicas, batch_size=args.batch_size, resume=args.resume, address=args.address,
                     kv_cache_gb=args.kv_cache_gb, cpus_per_replica=args.cpus_per_replica,
                     cpu_threads=args.cpu_threads,
                     engine_kwargs=args.engine_kwargs)
    try:
        total = check_input(job)
        print(f"{total} requests in {args.input}; starting {args.replicas} engine(s) (first start takes a "
              "minute or two on CPU)...", file=sys.stderr)
        bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)
        tokens = 0

        def progress(lines: int, block_tokens: int) -> None:
            nonlocal tokens
            tokens += block_tokens
            bar.update(lines)
            bar.set_postfix(tokens=tokens, refresh=False)

        try:
            summary = run(job, progress)
        finally:
            bar.close()
    except OfflineError as exc:
        raise CLIError(str(exc), 2) from None
    if summary.skipped:
        print(f"resumed: {summary.skipped} requests were already in {args.output}", file=sys.stderr)
    print(f"wrote {summary.written} lines to {args.output} ({summary.failed} errors) in {summary.seconds:.1f} s: "
          f"{summary.written / summary.seconds if summary.seconds else 0:.1f} req/s, "
          f"{summary.tokens_per_second:.0f} output tokens/s; after engine start "
          f"{summary.steady_tokens_per_second:.0f} output tokens/s", file=sys.stderr)
    if args.summary_json is not None:
        from dataclasses import asdict

        args.summary_json.write_text(json.dumps({**asdict(summary), "tokens_per_second": summary.tokens_per_second,
                                                 "steady_tokens_per_second": summary.steady_tokens_per_second}))
    return 0  # per-line errors are results (in OUT, like the Batch API's error file), not a failed run
