"""``ray-serve-cai up`` as a user runs it, for benchmarks that measure the URL the README gives: started
on a serve config (``moved_to_free_ports`` runs a copy beside another stack), read until it prints
``ready:``, stopped with SIGTERM, with what outlived it reported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from launchers.local import free_port
from launchers.procs import descendants, running


class UpStack:
    """``ray-serve-cai up`` as a user runs it: started, read until ``ready:``, stopped with SIGTERM."""

    def __init__(self, config: Path, log: Path) -> None:
        command = [str(Path(sys.executable).parent / "ray-serve-cai"), "up", "--config", str(config)]
        self.log = log
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                                        stdin=subprocess.DEVNULL, process_group=0)
        self.url = ""
        self.startup_s = 0.0
        self.phases: dict[str, float] = {}

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"ray-serve-cai up exited with {self.process.wait()} before ready")
            if line.startswith("ready:"):
                self.startup_s = time.perf_counter() - self.started
                self.phases = startup_phases(self.log.read_text(errors="replace"), self.startup_s)
                self.url = line.split()[1].removesuffix("/v1")
                return self.url
        raise TimeoutError("ray-serve-cai up did not print ready: in time")

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as ``kill`` does; returns the teardown time and any process that outlived it."""
        if self.process.poll() is not None:
            return {"teardown_s": None, "leftover": []}
        tree = descendants(self.process.pid)
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        teardown = time.perf_counter() - started
        time.sleep(1)
        leftover = running(tree)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return {"teardown_s": teardown, "leftover": [process_name(pid) for pid in leftover]}


def startup_phases(log: str, ready_s: float) -> dict[str, float]:
    """Seconds per start-up step, from the elapsed time ``up`` prints on every progress line."""
    marks = {}
    for line in log.splitlines():
        match = re.match(r"\[up +([0-9.]+)s\] (deploying|waiting for the engine)", line)
        if match:
            marks[match.group(2)] = float(match.group(1))
    if len(marks) < 2:
        return {}
    return {"ray_head_s": marks["deploying"], "deploy_s": marks["waiting for the engine"] - marks["deploying"],
            "engine_and_first_generation_s": ready_s - marks["waiting for the engine"]}


def moved_to_free_ports(config: Path, workdir: Path) -> Path:
    """A copy of ``config`` whose Serve and listener ports are free ones, to run beside the main stack."""
    raw = yaml.safe_load(config.read_text())
    raw.setdefault("http_options", {})["port"] = free_port()
    raw.setdefault("grpc_options", {})["port"] = free_port()
    for app in raw.get("applications") or []:
        listen = ((app.get("args") or {}).get("router") or {}).get("listen")
        if listen:
            listen["port"] = free_port()
    path = workdir / f"moved-{config.name}"
    path.write_text(yaml.safe_dump(raw))
    return path


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:60].strip()
    except OSError:
        return str(pid)
