"""The processes of one benchmark, read from Linux's /proc: peak memory per kind, and the sweep that
leaves nothing behind.

Every benchmark runs in a session of its own (the runner starts it with ``start_new_session``), so
"its processes" is exactly "processes whose session id is the benchmark's pid", whatever process
groups Ray or vLLM create below it.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from launchers.procs import read
from ray_serve_cai.bench.results import MemoryPeak

PAGE = os.sysconf("SC_PAGE_SIZE")

# Command-line markers of the processes the report names, first match wins. A process matching none
# (vLLM's engine core and workers, Ray's worker pool) counts towards its nearest named ancestor.
KINDS: tuple[tuple[str, str], ...] = (
    ("ServeController", "serve controller"),
    ("ProxyActor", "serve proxy"),
    ("haproxy", "serve haproxy"),
    ("ServeReplica:router:engine", "engine replica"),
    ("ServeReplica:llm", "engine replica"),
    ("ServeReplica:", "router replica"),
    ("vllm.entrypoints.openai.api_server", "stock vLLM server"),
    ("litellm", "LiteLLM proxy"),
    ("synapse", "synapse"),
    ("locust", "load client (locust)"),
    ("batch run", "batch run CLI"),
    ("ray::IDLE", "ray idle workers"),
    ("raylet", "ray system"),
    ("gcs_server", "ray system"),
    ("dashboard", "ray system"),
    ("ray start", "ray system"),
)


@dataclass
class _Proc:
    pid: int
    ppid: int
    session: int
    rss: int
    cmdline: str


def _read(entry: Path) -> _Proc | None:
    proc = read(entry.name)
    if proc is None or proc.state in ("Z", "X"):  # dead, waiting to be reaped: nothing to kill or measure
        return None
    try:
        rss = int((entry / "statm").read_text().split()[1]) * PAGE
        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError, ValueError):
        return None
    return _Proc(int(entry.name), proc.ppid, proc.session, rss, cmdline or proc.name)


def session_processes(session: int) -> list[_Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            proc = _read(entry)
            if proc is not None and proc.session == session:
                found.append(proc)
    return found


def kind_of(cmdline: str) -> str | None:
    return next((kind for marker, kind in KINDS if marker in cmdline), None)


def classify(procs: list[_Proc], root: int) -> dict[int, tuple[str, int]]:
    """Each process's kind and owner: its own marker (it owns itself), else its nearest named ancestor's,
    else the benchmark driver's (``root``)."""
    by_pid = {p.pid: p for p in procs}
    owners: dict[int, tuple[str, int]] = {}

    def resolve(pid: int, depth: int = 0) -> tuple[str, int]:
        if pid in owners:
            return owners[pid]
        proc = by_pid.get(pid)
        if proc is None or depth > 64:
            return "benchmark driver", root
        own = "benchmark driver" if pid == root else kind_of(proc.cmdline)
        owners[pid] = (own, pid) if own else resolve(proc.ppid, depth + 1)
        return owners[pid]

    for proc in procs:
        resolve(proc.pid)
    return owners


@dataclass
class MemorySampler:
    """Samples the benchmark's session every ``interval`` s in a thread; keeps the peak per kind."""

    session: int
    interval: float = 1.0
    peaks: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    largest: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        procs = session_processes(self.session)
        owners = classify(procs, self.session)
        totals: dict[str, int] = {}
        counts: dict[str, int] = {}
        trees: dict[tuple[str, int], int] = {}
        for proc in procs:
            kind, owner = owners[proc.pid]
            totals[kind] = totals.get(kind, 0) + proc.rss
            trees[kind, owner] = trees.get((kind, owner), 0) + proc.rss
            counts[kind] = counts.get(kind, 0) + 1
        for kind, total in totals.items():
            if total / 2**20 > self.peaks.get(kind, 0.0):
                self.peaks[kind] = total / 2**20
                self.counts[kind] = counts[kind]
        for (kind, _), rss in trees.items():
            self.largest[kind] = max(self.largest.get(kind, 0.0), rss / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[MemoryPeak]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return [MemoryPeak(process=kind, peak_rss_mib=round(mib, 1), processes=self.counts[kind],
                           largest_mib=round(self.largest[kind], 1))
                for kind, mib in sorted(self.peaks.items(), key=lambda item: -item[1])]


def kill_session(session: int, sig: int = signal.SIGKILL) -> list[str]:
    """Send ``sig`` to every process left in ``session``; the command lines of those it reached."""
    killed = []
    for proc in session_processes(session):
        try:
            os.kill(proc.pid, sig)
            killed.append(proc.cmdline.strip()[:120])
        except ProcessLookupError:
            pass
    return killed
