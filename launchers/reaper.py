"""Tear down a private Ray instance when the process that started it dies, SIGKILL included.

``ray.init()`` without an address starts GCS, raylet, agents and workers. Ray makes the raylet and
workers share the driver's fate, but its dashboard and runtime-env agents (and any process a worker
started, such as a vLLM engine core) can outlive a driver that was SIGKILLed. No signal handler runs
on SIGKILL, so the clean-up must live in another process:

``guard()`` spawns a small watchdog in a session of its own. The watchdog holds the read end of a
pipe whose only writer is the guarded process; when the guarded process dies, however it dies, the
pipe reports end-of-file and the watchdog SIGKILLs what the guarded process started. Two ways to
know those, because each alone misses some:

- the watchdog snapshots the guarded process's tree twice a second. Once the guarded process is
  dead its children are re-parented to init, so only a snapshot taken before still knows them;
- the guarded process's environment carries a unique token that every process started from here
  inherits. That finds a process started after the last snapshot, but not every process: one that
  renames itself with setproctitle (Ray's agents and workers, vLLM's engine core) overwrites the
  memory /proc/PID/environ shows, token included.

Neither touches anything another program started: a snapshotted pid is only killed while its start
time still matches, and the token is unique to this guarded process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from launchers.procs import Proc, descendants, table

MARKER = "RAY_SERVE_CAI_REAP_TOKEN"
# After the guarded process dies, keep sweeping until no marked process is seen this many times in
# a row (a worker may be forking while the sweep runs), or until the deadline.
QUIET_SWEEPS = 3
SWEEP_SECONDS = 0.2
DEADLINE_SECONDS = 30.0
SNAPSHOT_SECONDS = 0.5


def guard() -> str:
    """Start the watchdog for this process; returns the token its descendants carry."""
    token = uuid.uuid4().hex  # never an inherited one: that would make us reap our parent's processes
    read_end, write_end = os.pipe()  # non-inheritable: only this process holds the writer
    subprocess.Popen([sys.executable, "-m", "launchers.reaper", token, str(os.getpid())], stdin=read_end,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                     env={**os.environ, MARKER: ""})
    os.close(read_end)
    os.environ[MARKER] = token
    _keep.append(write_end)  # closed by the kernel when this process ends, never before
    return token


_keep: list[int] = []


def marked(token: str) -> list[int]:
    """PIDs of live processes whose environment carries ``token`` (this process excluded)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(token: str, known: dict[int, int] | None = None) -> int:
    """SIGKILL every marked process, every ``known`` one (pid -> start time) and everything below
    them, until none is left; returns how many were killed."""
    known = dict(known or {})
    killed, quiet, deadline = 0, 0, time.monotonic() + DEADLINE_SECONDS
    while quiet < QUIET_SWEEPS and time.monotonic() < deadline:
        procs = table()
        targets = set(marked(token)) | set(_still_running(known, procs))
        for pid in list(targets):
            targets.update(descendants(pid, procs))  # forked after the last snapshot
        known.update({pid: procs[pid].started for pid in targets if pid in procs})
        quiet = 0 if targets else quiet + 1
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(SWEEP_SECONDS)
    return killed


def _still_running(known: dict[int, int], procs: dict[int, Proc]) -> dict[int, int]:
    """Those of ``known`` (pid -> start time) that are still the same processes in ``procs``."""
    return {pid: started for pid, started in known.items() if pid in procs and procs[pid].started == started}


def _ended(timeout: float) -> bool:
    """Whether the pipe reports end-of-file within ``timeout`` (nothing is ever written to it)."""
    readable, _, _ = select.select([sys.stdin.buffer], [], [], timeout)
    return bool(readable) and not os.read(sys.stdin.fileno(), 65536)


def _watch(token: str, guarded: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the guarded process, not for us
    known: dict[int, int] = {}
    while not _ended(SNAPSHOT_SECONDS):
        procs = table()
        known = {pid: procs[pid].started for pid in descendants(guarded, procs) if pid != os.getpid()} | \
            _still_running(known, procs)
    sweep(token, known)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
