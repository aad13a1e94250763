"""The reaper: whatever a guarded process started dies with it, SIGKILL included, and nothing else does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launchers.local import descendants, running
from launchers.reaper import MARKER

GUARDED = """
import subprocess, sys, time
from launchers.reaper import guard
guard()
subprocess.Popen(["sleep", "300"], start_new_session=True)   # escapes the process group
subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"])       # a grandchild
print("ready", flush=True)
time.sleep(300)
"""


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(pids)


def test_everything_a_sigkilled_process_started_dies_and_nothing_else(tmp_path):
    bystander = subprocess.Popen(["sleep", "300"])  # not started by the guarded process
    guarded = subprocess.Popen([sys.executable, "-c", GUARDED], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    try:
        assert guarded.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:  # the shell starts its sleeps on its own time
            tree = [pid for pid in descendants(guarded.pid) if _cmdline(pid) != b"" and not _is_reaper(pid)]
            sleepers = [pid for pid in tree if _cmdline(pid).startswith(b"sleep")]
            if len(sleepers) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(sleepers) == 3, tree
        guarded.send_signal(signal.SIGKILL)
        guarded.wait(5)
        assert wait_gone(tree) == []
        assert running([bystander.pid])
    finally:
        bystander.kill()
        guarded.kill()


def test_a_normal_exit_also_leaves_nothing_behind():
    script = GUARDED.replace('print("ready", flush=True)\ntime.sleep(300)', 'print("ready", flush=True)')
    done = subprocess.run([sys.executable, "-c", script + "\nimport os\nprint(os.getpid())"], capture_output=True,
                          text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    token_holders = _marked_sleepers()
    deadline = time.monotonic() + 15
    while token_holders and time.monotonic() < deadline:
        time.sleep(0.05)
        token_holders = _marked_sleepers()
    assert token_holders == []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_reaper(pid: int) -> bool:
    return b"launchers.reaper" in _cmdline(pid)


def _marked_sleepers() -> list[int]:
    """``sleep 300`` processes carrying a reaper token that were started by this test's scripts."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if cmdline == b"sleep\x00300\x00" and any(item.startswith(MARKER.encode() + b"=") and len(item) > len(MARKER) + 1
                                                   for item in environ.split(b"\0")) and running([int(entry.name)]):
            found.append(int(entry.name))
    return found
