"""Ray "nodes" on one machine, each its own ``ray start --block`` on its own loopback address with its
own temp dir, as a Kubernetes pod runs one; and a sampler of each node's whole process tree.

Several nodes share one host here, so every node-local port is a free one (as the CML launcher does
with ``RAY_CAI_FREE_PORTS``, ``launchers/cai/scripts/ray_node.py``), a ``*-host`` start parameter
(``dashboard-host: 0.0.0.0`` in a manifest) becomes the node's own address, and nothing listens
beyond loopback. A node is stopped through its process tree (``launchers.local.stop_tree``), never
with ``ray stop``, which stops every Ray of the user on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from launchers.cai.scripts.ray_node import free_port, node_args
from launchers.local import ClusterError, _bin, stop_tree
from launchers.polling import PollTimeout, poll_until

MIB = 2**20
START_ATTEMPTS = 3  # Ray gives a raylet 30 s to register with the GCS; a busy 2-core host can miss it


@dataclass
class RayNode:
    """One ``ray start --block`` with ``params`` (a manifest's ``rayStartParams``) on ``ip``."""

    name: str
    ip: str
    params: dict[str, str]
    env: dict[str, str]
    temp_dir: Path
    head_address: str | None = None  # None: this node is the head
    gcs_port: int = 0
    dashboard_port: int = 0
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if self.head_address is None:
            self.gcs_port = self.gcs_port or free_port(self.ip)
            self.dashboard_port = self.dashboard_port or free_port(self.ip)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.ip}:{self.dashboard_port}"

    @property
    def log_path(self) -> Path:
        return self.temp_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        args = node_args({"RAY_CAI_FREE_PORTS": "1"}, self.ip)  # node ip, --block, free node-local ports
        for key, value in self.params.items():
            flag = f"--{key}"
            if flag in args:  # a node-local port: a free one here (a manifest's 8080 fits one pod, not three)
                continue
            args += [flag, self.ip if key.endswith("-host") else value]
        args += ["--temp-dir", str(self.temp_dir)]
        if self.head_address is None:
            return [_bin("ray"), "start", "--head", "--port", str(self.gcs_port), "--dashboard-port",
                    str(self.dashboard_port), "--ray-client-server-port", str(free_port(self.ip)), *args]
        return [_bin("ray"), "start", "--address", self.head_address, *args]

    def start(self, up: Callable[[], bool], timeout_s: float = 120) -> RayNode:
        """Start it in a process group of its own (in the caller's session: one scheduling group) and
        wait until ``up()``; retried when ``ray start`` gives up on a busy host."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, process_group=0)

            def ready(process: subprocess.Popen = self.process) -> bool:
                if process.poll() is not None:
                    raise ClusterError(f"ray start of {self.name} exited with {process.returncode}")
                return up()

            try:
                poll_until(ready, timeout_s, 0.5)
                return self
            except (ClusterError, PollTimeout) as exc:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise ClusterError(f"{self.name} did not start ({exc}); see {self.log_path}") from None
                time.sleep(3)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:  # ray start gave up: what it started may still run in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        stop_tree(self.process)


def head_up(head: RayNode) -> bool:
    return get_json(f"{head.dashboard_url}/api/version") is not None


def node_alive(head: RayNode, ip: str) -> bool:
    """Whether the GCS lists a live node on ``ip`` (Ray's state API, through the head's dashboard)."""
    found = get_json(f"{head.dashboard_url}/api/v0/nodes?limit=100") or {}
    nodes = ((found.get("data") or {}).get("result") or {}).get("result") or []
    return any(n.get("node_ip") == ip and n.get("state") == "ALIVE" for n in nodes)


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@dataclass
class TreeMemory:
    """Every ``interval`` s, the RSS of each node's whole process tree: its ``ray start`` and every
    process below it, and any that left the tree (re-parented) while it still runs. Keeps the series,
    the peak, and which processes made up the peak."""

    nodes: list[RayNode]
    interval: float = 0.5
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # node -> [(t, RSS MiB)]
    # PSS: shared pages split between the processes sharing them; summed over a tree it is close to what a
    # pod's cgroup is charged, where the RSS sum counts every shared library once per process
    pss_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    at_peak: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> {process kind: RSS MiB}
    marks: dict[str, float] = field(default_factory=dict)
    _known: dict[str, dict[int, psutil.Process]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self._t0, 2)

    def sample(self) -> None:
        now = round(time.monotonic() - self._t0, 2)
        for node in self.nodes:
            known = self._known.setdefault(node.name, {})
            if node.process is not None and node.process.poll() is None:
                try:
                    root = psutil.Process(node.process.pid)
                    for proc in [root, *root.children(recursive=True)]:
                        known.setdefault(proc.pid, proc)
                except psutil.NoSuchProcess:
                    pass
            parts: dict[str, float] = {}
            pss = 0.0
            for pid, proc in list(known.items()):
                try:
                    if not proc.is_running():  # gone, or its pid reused by another process
                        raise psutil.NoSuchProcess(pid)
                    full, label = proc.memory_full_info(), _label(proc)
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    del known[pid]
                    continue
                parts[label] = parts.get(label, 0.0) + full.rss / MIB
                pss += full.pss / MIB
            self.pss_series.setdefault(node.name, []).append((now, round(pss, 1)))
            total = sum(parts.values())
            series = self.series.setdefault(node.name, [])
            if total > max((mib for _, mib in series), default=0.0):
                self.at_peak[node.name] = {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda i: -i[1])}
            series.append((now, round(total, 1)))

    def leftovers(self) -> list[psutil.Process]:
        """Processes of the nodes still running (to kill after the nodes' own stop)."""
        return [p for known in self._known.values() for p in known.values() if p.is_running()]

    def peak(self, node: str, start: str | None = None, end: str | None = None, pss: bool = False) -> float | None:
        lo, hi = self.marks.get(start or "", float("-inf")), self.marks.get(end or "", float("inf"))
        values = [mib for t, mib in (self.pss_series if pss else self.series).get(node, []) if lo <= t <= hi]
        return max(values) if values else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._loop, name="node-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _label(proc: psutil.Process) -> str:
    """A process's name in the report: Ray's title for its workers (``ray::ServeReplica:router:Router``,
    ``ray::IDLE``), else the program or Python script (``raylet``, ``gcs_server``, ``dashboard.py``)."""
    words = proc.cmdline() or [proc.name()]
    if "python" in Path(words[0]).name:
        words = [w for w in words[1:] if not w.startswith("-")] or words
    return Path(words[0].split(" ")[0]).name[:48] or proc.name()


def kill_all(procs: list[psutil.Process]) -> int:
    killed = 0
    for proc in procs:
        try:
            proc.kill()
            killed += 1
        except psutil.NoSuchProcess:
            pass
    return killed
