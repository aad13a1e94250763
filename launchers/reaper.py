"""Tear down a private Ray instance when the process that started it dies, SIGKILL included.

``ray.init()`` without an address starts GCS, raylet, agents and workers. Ray makes the raylet and
workers share the driver's fate, but its dashboard and runtime-env agents (and any process a worker
started, such as a vLLM engine core) can outlive a driver that was SIGKILLed. No signal handler runs
on SIGKILL, so the clean-up must live in another process:

``guard()`` marks the current process's environment with a unique token (every process Ray starts
from here inherits it, grandchildren included) and spawns a small watchdog in a session of its own.
The watchdog holds the read end of a pipe whose only writer is the guarded process; when the guarded
process dies, however it dies, the pipe reports end-of-file and the watchdog SIGKILLs every process
that still carries the token. Matching on the token rather than on the process tree also finds
processes already re-parented to init, and never touches anything another program started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "RAY_SERVE_CAI_REAP_TOKEN"
# After the guarded process dies, keep sweeping until no marked process is seen this many times in
# a row (a worker may be forking while the sweep runs), or until the deadline.
QUIET_SWEEPS = 3
SWEEP_SECONDS = 0.2
DEADLINE_SECONDS = 30.0


def guard() -> str:
    """Start the watchdog for this process; returns the token its descendants carry."""
    token = uuid.uuid4().hex  # never an inherited one: that would make us reap our parent's processes
    read_end, write_end = os.pipe()  # non-inheritable: only this process holds the writer
    subprocess.Popen([sys.executable, "-m", "launchers.reaper", token], stdin=read_end,
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


def sweep(token: str) -> int:
    """SIGKILL every marked process until none is left; returns how many were killed."""
    killed, quiet, deadline = 0, 0, time.monotonic() + DEADLINE_SECONDS
    while quiet < QUIET_SWEEPS and time.monotonic() < deadline:
        pids = marked(token)
        quiet = 0 if pids else quiet + 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(SWEEP_SECONDS)
    return killed


def _watch(token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the guarded process, not for us
    while sys.stdin.buffer.read(65536):  # nothing is ever written: this returns at end-of-file
        pass
    sweep(token)


if __name__ == "__main__":
    _watch(sys.argv[1])
