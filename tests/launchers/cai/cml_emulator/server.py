"""Run the emulator on a free loopback port in a background thread (uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from .app import EmulatorApp, Fault
from .spec import Spec
from .store import Store, Timing
from .workloads import alive_pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CMLEmulator:
    """``with CMLEmulator(tmp_path) as cml: CMLClient(cml.url, cml.api_key)``."""

    def __init__(self, root: Path, *, api_key: str = "emulator-key-0123456789", timing: Timing | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.store = Store(root, self.url, api_key, timing or Timing())
        self.app = EmulatorApp(Spec(), self.store)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="cml-emulator", daemon=True)

    def __enter__(self) -> CMLEmulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("CML emulator did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.shutdown()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- test helpers -----------------------------------------------------------------------------
    def inject(self, match: str, status: int = 500, count: int = 1, delay: float = 0.0) -> Fault:
        fault = Fault(match, status, count, delay)
        self.app.faults.append(fault)
        return fault

    def add_project(self, name: str) -> str:
        with self.store.lock:
            wire = self.store.create_project({"name": name})
            wire["creation_status"] = "success"
            self.store.projects[wire["id"]].due = float("inf")
        return wire["id"]

    def project_dir(self, project_id: str) -> Path:
        return self.store.project_dir(project_id)

    def workload_pids(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        for workload in self.store.workloads():
            workload.sample()
            seen |= workload.seen
        return seen

    def alive_workload_pids(self) -> set[int]:
        return alive_pids(self.workload_pids())
