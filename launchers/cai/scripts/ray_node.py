"""Run one Ray node inside a CML application: the uploaded launcher script (stdlib only).

CML gives an application no address in the API; the head therefore publishes its real
``CDSW_IP_ADDRESS:port`` in a file on the shared project filesystem and workers wait for that file
before ``ray start --address``. Each start carries a token, so a worker never joins a stale head
left behind by an earlier start. Ray runs in the foreground (``--block``): when CML stops the
application it kills this process and Ray's children go with it.

Environment (set by ``CAIClusterManager`` on the application):
  RAY_CAI_ROLE          head | worker
  RAY_CAI_DIR           cluster directory, relative to the project root (HOME, /home/cdsw on CML)
  RAY_CAI_TOKEN         token of the head generation; written by the head, awaited by workers
  RAY_CAI_NONCE         identity of this application; echoed in its readiness file
  RAY_CAI_NODE          node name (head, worker-1, ...), names the readiness file
  RAY_CAI_PORT          GCS port of the head;  RAY_CAI_DASHBOARD_PORT  dashboard port
  RAY_CAI_NUM_CPUS / RAY_CAI_NUM_GPUS / RAY_CAI_OBJECT_STORE_MB   resources Ray advertises
  RAY_CAI_INCLUDE_DASHBOARD  1 | 0 (head only)
  RAY_CAI_FREE_PORTS    1: pick free node-local ports (several nodes on one host: tests, emulator)
  RAY_CAI_TEMP_DIR      Ray --temp-dir (a node suffix is appended)
  RAY_CAI_WAIT_S        how long a worker waits for the head's address (default 600)
  RAY_CAI_START_ATTEMPTS  tries of ``ray start`` (default 3)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def log(message: str) -> None:
    print(f"[ray-node {os.environ.get('RAY_CAI_NODE', '?')}] {message}", flush=True)


def project_root() -> Path:
    return Path(os.environ.get("HOME") or "/home/cdsw")


def ray_executable() -> str:
    """The ``ray`` of the project venv if setup_environment made one, else the runtime's own."""
    candidates = [project_root() / ".venv" / "bin" / "ray", Path(sys.executable).parent / "ray"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise SystemExit("ray executable not found: run the setup_environment job first")
    return found


def free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: a reader never sees half a file


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def node_args(env: dict[str, str], ip: str) -> list[str]:
    args = ["--node-ip-address", ip, "--block", "--disable-usage-stats"]
    if env.get("RAY_CAI_NUM_CPUS"):
        args += ["--num-cpus", env["RAY_CAI_NUM_CPUS"]]
    args += ["--num-gpus", env.get("RAY_CAI_NUM_GPUS", "0")]
    if env.get("RAY_CAI_OBJECT_STORE_MB"):
        args += ["--object-store-memory", str(int(env["RAY_CAI_OBJECT_STORE_MB"]) * 1024 * 1024)]
    if env.get("RAY_CAI_TEMP_DIR"):
        args += ["--temp-dir", f"{env['RAY_CAI_TEMP_DIR']}-{env.get('RAY_CAI_NODE', 'node')}"]
    if env.get("RAY_CAI_FREE_PORTS") == "1":
        for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                     "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                     "--runtime-env-agent-port"):
            args += [flag, str(free_port(ip))]
    return args


def wait_for_head(cluster_dir: Path, token: str, wait_s: float) -> dict:
    deadline = time.monotonic() + wait_s
    head = read_json(cluster_dir / "head.json")
    while not head or head.get("token") != token:
        if time.monotonic() > deadline:
            raise SystemExit(f"head address not published in {cluster_dir / 'head.json'} after {wait_s:.0f}s")
        time.sleep(0.5)
        head = read_json(cluster_dir / "head.json")
    return head


def build_command(env: dict[str, str], role: str, ip: str, head_address: str | None) -> list[str]:
    command = [ray_executable(), "start", *node_args(env, ip)]
    if role == "worker":
        return command + ["--address", str(head_address)]
    dashboard = env.get("RAY_CAI_INCLUDE_DASHBOARD", "1") == "1"
    command += ["--head", "--port", env.get("RAY_CAI_PORT", "6379"), f"--include-dashboard={str(dashboard).lower()}"]
    if dashboard:
        command += ["--dashboard-host", ip, "--dashboard-port", env.get("RAY_CAI_DASHBOARD_PORT", "8265")]
    if env.get("RAY_CAI_FREE_PORTS") == "1":
        command += ["--ray-client-server-port", str(free_port(ip))]
    return command


class Node:
    """``ray start --block`` in its own process group, so a failed attempt leaves nothing behind."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.terminating = False
        signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, *_: object) -> None:
        self.terminating = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # ray start --block drains and stops its own processes

    def start(self, command: list[str], env: dict[str, str], ready: Callable[[], bool]) -> bool:
        log("running " + " ".join(command))
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        started = threading.Event()
        threading.Thread(target=_relay, args=(self.proc, started), daemon=True).start()
        while not (started.is_set() and ready()):
            if self.proc.poll() is not None or self.terminating:
                log(f"ray start exited with {self.proc.returncode} before the node was up")
                self.kill_group()
                return False
            time.sleep(0.3)
        return True

    def kill_group(self) -> None:
        assert self.proc is not None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(2)

    def wait(self) -> int:
        assert self.proc is not None
        code = self.proc.wait()
        self.kill_group()  # whatever Ray left in the group
        return code


def main() -> int:
    env = dict(os.environ)
    role = env.get("RAY_CAI_ROLE", "")
    if role not in ("head", "worker"):
        raise SystemExit(f"RAY_CAI_ROLE must be head or worker, not {role!r}")
    ip = env.get("CDSW_IP_ADDRESS") or socket.gethostbyname(socket.gethostname())
    cluster_dir = project_root() / env["RAY_CAI_DIR"]
    token = env["RAY_CAI_TOKEN"]
    node_name = env.get("RAY_CAI_NODE", role)
    port = int(env.get("RAY_CAI_PORT", "6379"))
    # Ray workers import the project checkout (serve configs name modules in it).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root()), env.get("PYTHONPATH")) if p)
    head_address = None
    if role == "worker":
        head_address = wait_for_head(cluster_dir, token, float(env.get("RAY_CAI_WAIT_S", "600")))["address"]
        log(f"joining head at {head_address}")

    node = Node()
    attempts = int(env.get("RAY_CAI_START_ATTEMPTS", "3"))
    for attempt in range(1, attempts + 1):
        # Ray gives a raylet 30 s to register with the GCS; a busy host can miss that: try again.
        if node.start(build_command(env, role, ip, head_address), env,
                      ready=lambda: role == "worker" or port_open(ip, port)):
            break
        if node.terminating or attempt == attempts:
            return 1
        log(f"start attempt {attempt}/{attempts} failed; retrying in 5 s")
        time.sleep(5)
    info = {"token": token, "nonce": env.get("RAY_CAI_NONCE", ""), "node": node_name, "ip": ip,
            "pid": os.getpid(), "time": time.time()}
    if role == "head":
        info |= {"address": f"{ip}:{port}", "dashboard_port": int(env.get("RAY_CAI_DASHBOARD_PORT", "8265"))}
        write_json(cluster_dir / "head.json", info)
    else:
        write_json(cluster_dir / "nodes" / f"{node_name}.json", info)
    log(f"ready ({ip}:{port})")
    return node.wait()


def _relay(proc: subprocess.Popen, started: threading.Event) -> None:
    """Relay Ray's output to the application log; ``ray start`` prints the marker once the node is up."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if "Ray runtime started" in line:
            started.set()


if __name__ == "__main__":
    sys.exit(main())
