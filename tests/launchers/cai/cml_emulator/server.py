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
    def inject(self, match: str, status: int | None = 500, count: int = 1, delay: float = 0.0, *,
               after: bool = False, reset: bool = False, each_line: bool = False,
               retry_after: str | None = "0", body: bytes | None = None, headers: dict[str, str] | None = None,
               content_type: str = "application/json", skip: int = 0) -> Fault:
        """See ``Fault``; e.g. ``inject("/jobs", 502, after=True)``: the job is made, the client sees a 502."""
        fault = Fault(match, status, count, delay, retry_after, after=after, reset=reset, each_line=each_line,
                      body=body, headers=headers or {}, content_type=content_type, skip=skip)
        self.app.faults.append(fault)
        return fault

    def add_project(self, name: str, *, owner: str = "", visibility: str = "private") -> str:
        """A cloned project; ``owner`` another user's username makes it someone else's project."""
        with self.store.lock:
            wire = self.store.create_project({"name": name, "visibility": visibility})
            if owner:
                wire["owner"] = wire["creator"] = {**wire["owner"], "username": owner, "name": owner,
                                                    "email": f"{owner}@example.invalid"}
            wire["creation_status"] = "success"
            self.store.projects[wire["id"]].due = float("inf")
        return wire["id"]

    def project_dir(self, project_id: str) -> Path:
        return self.store.project_dir(project_id)

    def write(self, project_id: str, *paths: str, content: str = "") -> None:
        """Put files in a project (as a git clone or an upload would), e.g. scripts to create jobs on."""
        for path in paths:
            target = self.project_dir(project_id) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def workload_pids(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        for workload in self.store.workloads():
            workload.sample()
            seen |= workload.seen
        return seen

    def alive_workload_pids(self) -> set[int]:
        return alive_pids(self.workload_pids())
