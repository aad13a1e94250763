"""Real local processes standing in for CML pods (applications and job runs).

A pod's processes share a cgroup; here a workload's processes are found two ways: every process
inherits ``CML_EMULATOR_WORKLOAD=<id>`` in its environment, and the process tree is sampled while
the workload runs (Ray's agents rename themselves with setproctitle, which clobbers the environment
block, and leave the process group). Stopping the workload kills all of them (SIGTERM, a grace
period, then SIGKILL), like a pod deletion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

MARKER = "CML_EMULATOR_WORKLOAD"


def marked_processes(workload_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARKER) == workload_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


class Workload:
    """One script run as a process group with CDSW-like environment; output goes to ``log_path``."""

    def __init__(self, workload_id: str, project_dir: Path, script: str, env: dict[str, str],
                 log_path: Path, python: str = sys.executable) -> None:
        self.id = workload_id
        self.log_path = log_path
        self.seen: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)
        target = (project_dir / script).resolve()
        # A script is a path inside the project: never run a file elsewhere on this machine.
        if project_dir.resolve() not in target.parents or not target.is_file():
            raise FileNotFoundError(f"script {script!r} not found in the project")
        command = ["bash", str(target)] if script.endswith(".sh") else [python, str(target)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=project_dir, env={**env, MARKER: workload_id},
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self._remember([psutil.Process(self.proc.pid)])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def _remember(self, procs: list[psutil.Process]) -> None:
        for proc in procs:
            try:
                self.seen.setdefault(proc.pid, proc.create_time())
            except psutil.NoSuchProcess:
                continue

    def sample(self) -> None:
        """Remember every process of the workload (tests assert later that all are gone)."""
        try:
            self._remember(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def _members(self) -> list[psutil.Process]:
        members = marked_processes(self.id)
        self._remember(members)
        known = {p.pid for p in members}
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if pid not in known and proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    members.append(proc)
            except psutil.NoSuchProcess:
                continue
        return members

    def kill(self, grace_s: float) -> None:
        """Like a pod deletion: SIGTERM to everything, wait ``grace_s``, SIGKILL what is left."""
        self.sample()
        victims = self._members()
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for proc in victims:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, victims = psutil.wait_procs(victims, timeout=wait)
            victims += [p for p in self._members() if p not in victims]
            if not victims:
                break
        self.proc.poll()
        if self.proc.returncode is None:
            self.proc.wait(timeout=5)


def alive_pids(pids: dict[int, float]) -> set[int]:
    """Recorded processes still running. A zombie counts as gone (it holds nothing but an entry),
    and so does a new process that reused the pid (different create time)."""
    alive = set()
    for pid, created in pids.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def wait_gone(pids: dict[int, float], timeout_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (left := alive_pids(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
