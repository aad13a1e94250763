"""``ray-serve-cai up``: a local Ray cluster on 127.0.0.1 running a serve config, in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up",
        help="start a local Ray cluster on 127.0.0.1 and deploy a serve config (foreground; Ctrl-C stops)",
        description="Start a private Ray head on 127.0.0.1, `serve deploy` the config, wait until the "
        "engine can generate, print how to call it, and keep running until Ctrl-C, which tears "
        "the cluster down (only this cluster: other Ray clusters on the machine are untouched).",
    )
    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="serve config YAML (default: serve_configs/local.yaml)")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for readiness (default: 900)")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may schedule (default: all)")
    up.add_argument("--haproxy", action="store_true",
                    help="use Serve's HAProxy ingress (fastest measured path; note HAProxy binds its stats "
                         "and metrics ports on all interfaces)")
    up.add_argument("--detach", action="store_true", help="return once ready and leave the cluster running")
    up.set_defaults(func=_up)


def _http_base(config: dict) -> str:
    http = config.get("http_options") or {}
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{http.get('port', 8000)}"


def _up(args: argparse.Namespace) -> int:
    from launchers.local import ClusterError, LocalCluster
    from ray_serve_cai.cli import CLIError

    if not args.config.exists():
        raise CLIError(f"config file not found: {args.config}")
    try:
        config = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CLIError(f"{args.config} is not valid YAML: {exc}") from None
    base = _http_base(config)
    route = ((config.get("applications") or [{}])[0].get("route_prefix") or "/").rstrip("/")
    log = lambda msg: print(f"[up] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    cluster = LocalCluster(num_cpus=args.num_cpus, haproxy=args.haproxy)
    log(f"starting Ray head on {cluster.address} (logs: {cluster.temp_dir})")
    try:
        cluster.start()
        log(f"deploying {args.config}")
        cluster.deploy(args.config)
        log("waiting for the engine to load and answer a first generation (1-2 min on CPU)...")
        cluster.wait_ready(f"{base}{route}/health", timeout_s=args.timeout, progress=log)
    except ClusterError as exc:
        cluster.stop()
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        cluster.stop()
        raise
    print(f"ready: {base}{route}/v1  (Ray {cluster.address}, dashboard {cluster.dashboard_url})", flush=True)
    print(f"  curl {base}{route}/v1/chat/completions -H 'content-type: application/json' "
          "-d '{\"model\": \"tiny-chat\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}'", flush=True)
    if args.detach:
        print(f"detached; stop with: kill -TERM -{cluster.process.pid}", flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while cluster.process.poll() is None:
            time.sleep(1)
        raise CLIError("the Ray cluster exited unexpectedly")
    except KeyboardInterrupt:
        log("stopping the cluster")
        cluster.stop()
    return 0
