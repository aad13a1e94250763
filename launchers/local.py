"""A Ray cluster on this machine, bound to 127.0.0.1, owned by one process tree.

Why not ``ray start`` + ``ray stop``: ``ray stop`` kills every Ray process of the user on the
machine. ``ray start --block`` in its own process group stops exactly its own cluster on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from launchers.crash_watch import CrashWatch
from launchers.polling import PollTimeout, poll_until
from launchers.procs import descendants, running

# Serve's fastest mode in loadtests/bench_router.py; read at import, so it must be in the cluster's env.
# Without its direct ingress: that would start Serve's proxy even where a config turns it off
# (proxy_location: Disabled, the local profile: the router's listener is the door). HAProxy mode
# turns direct ingress back on by itself.
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray starts its workers -- every replica, and the engine processes they spawn -- at niceness 15, so
# that its own daemons stay responsive. On a serving machine that hands the CPU to everything else
# first: measured with loadtests/bench_frontdoor.py, the replicas lost throughput to the load
# client and to a stock vLLM server at niceness 0. Replicas here are the workload: same niceness as
# everything else. A user who sets RAY_worker_niceness keeps their choice.
SCHEDULING_ENV = {"RAY_worker_niceness": "0"}
# Ray turns token auth on by itself when ~/.ray/auth_token exists; a loopback-only cluster owned by
# one process tree does not need it. A user who sets RAY_AUTH_MODE keeps their choice.
AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}
# Serve's controller reconciles every 0.1 s, busy or not: 0.28 CPU-s per 10 s on an idle `up`, taken
# from the engine on a small machine. Every 0.5 s it costs 0.12 and still reacts within a second
# (deploys, health, autoscaling). A user who sets RAY_SERVE_CONTROL_LOOP_INTERVAL_S keeps their choice.
CONTROL_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class LocalCluster:
    """One head node on loopback. ``start()``, ``deploy(config)``, ``wait_ready(url)``, ``stop()``."""

    num_cpus: int | None = None
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # Ray's metrics export (every node's series)
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rsc-ray-"))
    fast_path: bool = True
    haproxy: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    crash_watch: CrashWatch = field(init=False, repr=False)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def __post_init__(self) -> None:
        self.crash_watch = CrashWatch(self.logs_dir)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        """Ray's metrics export: Ray's, Serve's and every replica's custom series (Prometheus text)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def logs_dir(self) -> Path:
        """The Ray session's logs: ``ray start``'s, the controller's, each replica's (``worker-*.err``)."""
        return Path(self.temp_dir) / "session_latest" / "logs"

    def env(self) -> dict[str, str]:
        env = {**AUTH_ENV, **SCHEDULING_ENV, **CONTROL_ENV, **os.environ, **LOOPBACK_ENV,
               "RAY_ADDRESS": self.address, **self.extra_env}
        if self.fast_path:
            env.update({k: os.environ.get(k, v) for k, v in FAST_PATH_ENV.items()})
        if self.haproxy:
            env.update(self._haproxy_env())
        return env

    def _haproxy_env(self) -> dict[str, str]:
        """Serve's HAProxy ingress with this cluster's own ports and files (the defaults are fixed
        ports and /tmp/haproxy-serve, shared machine-wide). HAProxy binds its stats and metrics
        ports on all interfaces: use it on clusters, or locally inside a private network namespace."""
        if not hasattr(self, "_haproxy_cache"):
            base = Path(tempfile.mkdtemp(prefix="hap-", dir="/tmp"))  # socket paths max 97 chars
            self._haproxy_cache = {
                "RAY_SERVE_ENABLE_HA_PROXY": "1",
                "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            }
        return self._haproxy_cache

    def start(self, timeout_s: float = 120) -> LocalCluster:
        cmd = [_bin("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port), "--metrics-export-port", str(self.metrics_port),
               "--temp-dir", self.temp_dir,
               "--disable-usage-stats"]
        if self.num_cpus is not None:
            cmd += ["--num-cpus", str(self.num_cpus)]
        self.log_path = self.log_path or Path(self.temp_dir) / "ray-start.log"
        log = open(self.log_path, "ab")
        # A process group of its own (stop() kills it as one), but the caller's session: Linux's
        # autogroup scheduler treats every session as one scheduling entity, and a router replica in a
        # session apart from the engine it shares a core with is preempted more and costs more CPU per
        # request (figures in docs/router.md, "One scheduling group").
        self.process = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, process_group=0)
        process = self.process

        def head_up() -> bool:
            if process.poll() is not None:
                raise ClusterError(f"ray start exited with {process.returncode}; see {self.log_path}")
            return _get_json(f"{self.dashboard_url}/api/version") is not None

        try:
            poll_until(head_up, timeout_s, 0.5)
        except PollTimeout:
            self.stop()
            raise ClusterError(f"Ray head did not come up within {timeout_s:.0f}s; see {self.log_path}") from None
        return self

    def deploy(self, config_path: str | Path) -> None:
        """Deploy a serve config file onto this cluster (see ``deploy_config``)."""
        deploy_config(self.dashboard_url, config_path)

    def raise_if_crash_looping(self) -> None:
        """Fail when a process of this cluster (an engine, typically) keeps dying of the same fatal
        error: Serve would restart it forever and readiness would never come."""
        problem = self.crash_watch.check()
        if problem:
            raise ClusterError(problem)

    def serve_status(self) -> dict | None:
        return _get_json(f"{self.dashboard_url}/api/serve/applications/")

    def wait_ready(self, health_url: str, timeout_s: float = 600, progress=None) -> None:
        """Wait until ``health_url`` answers 200; fail early if a Serve app reports a failure."""
        status: dict = {}

        def ready() -> bool:
            nonlocal status
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError("the Ray cluster exited while waiting for the app")
            self.raise_if_crash_looping()
            try:
                with urllib.request.urlopen(health_url, timeout=5) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            status = self.serve_status() or {}
            for name, app in (status.get("applications") or {}).items():
                if app.get("status") == "DEPLOY_FAILED":
                    lines = [line for line in (app.get("message") or "").splitlines() if line.strip()]
                    raise ClusterError(f"app {name!r} failed to deploy: {lines[-1] if lines else 'no message'}")
            return False

        try:
            poll_until(ready, timeout_s, 1.0, status=lambda _: _describe(status), progress=progress)
        except PollTimeout:
            raise ClusterError(f"{health_url} was not ready within {timeout_s:.0f}s") from None

    def stop(self, grace_s: float = 4, progress=None) -> None:
        """Stop every process this cluster started: SIGTERM to all of them at once, SIGKILL to what
        is left after ``grace_s``.

        Why not ``serve shutdown`` first: it drains replicas one after another (about 30 s on a small
        machine) for in-flight requests a stopping cluster drops anyway. Replicas and vLLM's engine
        processes exit within a second of SIGTERM (releasing their shared memory); Ray's own daemons
        take ten more to stop gracefully with nothing left to save, hence the short grace. Ray workers
        run in process groups of their own and engines spawn more processes, so the process tree is
        snapshotted first: nothing this cluster started outlives ``stop()``.
        """
        if self.process is None or self.process.poll() is not None:
            return
        (progress or (lambda _: None))("stopping Ray and every process it started")
        stop_tree(self.process, grace_s)


def stop_tree(process: subprocess.Popen, grace_s: float = 4) -> None:
    """Stop a ``ray start --block`` started in a process group of its own and everything below it:
    SIGTERM to its group and to its tree (snapshotted first: Ray workers run in groups of their own),
    SIGKILL to what is left after ``grace_s``. Never ``ray stop``: that stops every Ray of the user."""
    if process.poll() is not None:
        return
    tree = descendants(process.pid)
    os.killpg(process.pid, signal.SIGTERM)
    _signal_all(tree, signal.SIGTERM)
    try:
        poll_until(lambda: process.poll() is not None and not running(tree), grace_s, 0.1)
    except PollTimeout:
        pass
    _signal_all([process.pid, *tree], signal.SIGKILL)
    process.wait(10)


def deploy_config(dashboard_url: str, config_path: str | Path) -> None:
    """Deploy a serve config file onto the cluster of ``dashboard_url``, exactly as ``serve deploy`` does
    (Serve's schema, then a PUT to the dashboard's Serve API), without starting a ``serve`` CLI process:
    that process's imports cost seconds of a start-up users wait for."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        config = ServeDeploySchema.model_validate(yaml.safe_load(Path(config_path).read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ClusterError(f"serve deploy failed: {config_path}: {str(exc).splitlines()[0]}") from None
    body = json.dumps(config.model_dump(mode="json", exclude_unset=True)).encode()
    request = urllib.request.Request(f"{dashboard_url}/api/serve/applications/", data=body, method="PUT",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120):
            return
    except urllib.error.HTTPError as exc:
        lines = exc.read().decode(errors="replace").strip().splitlines()
        raise ClusterError(f"serve deploy failed ({exc.code}): {lines[-1] if lines else exc.reason}") from None
    except OSError as exc:
        raise ClusterError(f"serve deploy failed: dashboard unreachable ({exc})") from None


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError, TimeoutError):
        return None


def _describe(status: dict) -> str:
    apps = status.get("applications") or {}
    if not apps:
        return "waiting for Serve to start"
    parts = []
    for name, app in apps.items():
        deployments = app.get("deployments") or {}
        states = ", ".join(f"{d}: {info.get('status')}" for d, info in deployments.items())
        parts.append(f"{name}: {app.get('status')} ({states})")
    return "; ".join(parts)
