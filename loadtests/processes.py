"""Processes on this machine: CPU seconds spent (from /proc), a command run in a session killed whole,
SIGTERM turned into a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from launchers.procs import read as read_proc


def process_cpu_seconds(pid: int | str) -> float | None:
    """CPU time (user + system, seconds) one process has used so far; None once it is gone (/proc)."""
    proc = read_proc(pid)
    return None if proc is None else proc.cpu_s


def cpu_seconds(match: str) -> float:
    """CPU time (user + system, seconds) of every live process whose command line contains ``match``:
    read around a run, it says how much CPU one request cost each process (Linux /proc)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if match not in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
        except OSError:
            continue
        total += process_cpu_seconds(entry.name) or 0.0
    return total


def run_contained(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` (output captured as text) in a session of its own that is killed whole once
    the command exits or times out, however the run ends: a vLLM engine's core and worker processes
    outlive a killed parent, and one left spinning would slow down every round after it. Output goes
    through files, not pipes, so a process left behind holding them cannot hold up the run."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # the whole session has already ended
                pass
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(cmd, process.returncode, stdout.read(), stderr.read())


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the clusters and servers we started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
