"""The reaper: whatever a guarded process started dies with it, SIGKILL included, and nothing else does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from launchers.procs import running

ROOT = Path(__file__).resolve().parents[2]
GUARDED = """
import subprocess, sys, time
from launchers.reaper import guard
guard()
children = [
    subprocess.Popen(["sleep", "300"], start_new_session=True),  # escapes the process group
    subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True),  # a grandchild
    # no token in its environment, like a process that renamed itself with setproctitle (Ray's
    # agents do): only the watchdog's snapshots of the tree know it
    subprocess.Popen(["sleep", "300"], env={}),
]
grandchild = int(children[1].stdout.readline())
time.sleep(1.5)  # at least two snapshots
print(" ".join(str(pid) for pid in [*(c.pid for c in children), grandchild]), flush=True)
if sys.argv[1] == "stay":
    time.sleep(300)
"""


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(pids)


def start(mode: str) -> tuple[subprocess.Popen, list[int]]:
    guarded = subprocess.Popen([sys.executable, "-c", GUARDED, mode], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    started = [int(pid) for pid in guarded.stdout.readline().split()]
    assert len(started) == 4 and len(running(started)) == 4, started
    return guarded, started


def test_everything_a_sigkilled_process_started_dies_and_nothing_else():
    bystander = subprocess.Popen(["sleep", "300"])  # not started by the guarded process
    guarded, started = start("stay")
    try:
        guarded.send_signal(signal.SIGKILL)
        guarded.wait(5)
        assert wait_gone(started) == []
        assert running([bystander.pid])
    finally:
        bystander.kill()
        guarded.kill()


def test_a_normal_exit_also_leaves_nothing_behind():
    guarded, started = start("exit")
    assert guarded.wait(30) == 0
    assert wait_gone(started) == []
