"""serve_apps/engines/cpu_pinning.py on a real process tree shaped like a private Ray instance with one
engine: a root (the driver) with a daemon child (two threads) and an engine owner, whose children are a
worker bound to core 0 (as vLLM binds its CPU worker) and an unbound engine core."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_apps.engines.cpu_pinning import keep_off_engine_cores

# argv: kinds of children to start ("bound", "free", "owner", ...); prints "pid:kind" of each process
# below it, depth first, once all are up. An "owner" starts a bound and a free child of its own.
NODE = r"""
import os, subprocess, sys, threading, time
if sys.argv[1] == "bound":
    os.sched_setaffinity(0, {0})
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
kids = [subprocess.Popen([sys.executable, __file__, kind, *(["bound", "free"] if kind == "owner" else [])],
                         stdout=subprocess.PIPE, text=True) for kind in sys.argv[2:]]
lines = [f"{os.getpid()}:{sys.argv[1]}"] + [kid.stdout.readline().strip() for kid in kids]
print(" ".join(lines), flush=True)
time.sleep(120)
"""


def thread_masks(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(task.name))) for task in Path(f"/proc/{pid}/task").iterdir()}


@pytest.fixture
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, list[int]]]:
    """Start a root with the test's children; {kind: [pids]}."""
    assert len(os.sched_getaffinity(0)) >= 2, "the pinning needs a second core to move processes to"
    script = tmp_path / "node.py"
    script.write_text(NODE)
    process = subprocess.Popen([sys.executable, str(script), "root", *request.param], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        found: dict[str, list[int]] = {}
        for entry in process.stdout.readline().split():
            pid, kind = entry.split(":")
            found.setdefault(kind, []).append(int(pid))
        yield found
    finally:
        os.killpg(process.pid, 9)
        process.wait()


@pytest.mark.parametrize("tree", [("daemon", "owner")], indirect=True)
def test_the_rest_leaves_the_engine_cores_and_the_engine_is_left_alone(tree: dict[str, list[int]]) -> None:
    machine = frozenset(os.sched_getaffinity(0))
    (root,), (daemon,), (owner,) = tree["root"], tree["daemon"], tree["owner"]
    (worker,), (engine_core,) = tree["bound"], tree["free"]

    pinning = keep_off_engine_cores(owner, [root])

    assert pinning is not None
    assert pinning.engine_cpus == {0}
    assert pinning.free_cpus == machine - {0}
    assert pinning.moved == 2  # the root and the daemon
    assert thread_masks(root) == thread_masks(daemon) == {machine - {0}}  # every thread, not just the main one
    assert thread_masks(worker) == {frozenset({0})}  # where vLLM put it
    assert thread_masks(owner) == thread_masks(engine_core) == {machine}  # the engine's own: left to the OS


@pytest.mark.parametrize("tree", [("daemon", "free")], indirect=True)
def test_nothing_moves_when_no_engine_core_is_bound(tree: dict[str, list[int]]) -> None:
    machine = frozenset(os.sched_getaffinity(0))
    (root,), (daemon,), (unbound,) = tree["root"], tree["daemon"], tree["free"]

    assert keep_off_engine_cores(unbound, [root]) is None
    assert thread_masks(root) == thread_masks(daemon) == {machine}


def test_a_process_that_is_gone_changes_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert keep_off_engine_cores(gone.pid, [gone.pid]) is None
