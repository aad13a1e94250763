"""Fixtures for the Matrix bot tests: a real Synapse on loopback, registered people, and the router
app with a ``matrix:`` section deployed next to the session's real vLLM engine (``serve_stack``).

The router in front of the engine has two backends: ``proxied`` (tier 0, a killable TCP proxy to the
engine; its health checks are slow on purpose so a kill is found by a request, i.e. by fallback) and
``engine`` (tier 1, the engine directly).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from launchers.local import free_port
from launchers.polling import poll_until
from loadtests.matrix_people import Person
from loadtests.matrix_synapse import Synapse
from tests.conftest import MODEL, write_serve_config

PROXY = Path(__file__).parents[1] / "router" / "tcp_proxy.py"
APP = "mbot"
# short enough that a long answer gets several edits after the default 0.5 s first-post window
EDIT_INTERVAL_S = 0.5


@dataclass
class People:
    bot: Person
    bot_password: str
    alice: Person
    bob: Person
    mallory: Person


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse")).start()
    try:
        yield server
    finally:
        server.stop()


def person(server: Synapse, localpart: str, password: str = "pw-0123456789") -> Person:
    account = server.register(localpart, password)
    return Person(server.url, account["user_id"], account["access_token"])


@pytest.fixture(scope="session")
def people(synapse: Synapse) -> People:
    return People(person(synapse, "bot", "bot-password-42"), "bot-password-42", person(synapse, "alice"),
                  person(synapse, "bob"), person(synapse, "mallory"))


@dataclass
class BotStack:
    serve_stack: Any
    synapse: Synapse
    people: People
    tmp: Path
    proxy: subprocess.Popen | None = None
    proxy_port: int = 0
    config_path: Path | None = None

    def start_proxy(self) -> None:
        target = self.serve_stack.base_url.split("://")[1]
        self.proxy = subprocess.Popen([sys.executable, str(PROXY), str(self.proxy_port), target])
        poll_until(self._proxy_up, 10, 0.1)

    def _proxy_up(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.proxy_port}/health", timeout=2)
            return True
        except httpx.HTTPError:
            return False

    def kill_proxy(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGKILL)
            self.proxy.wait(10)

    def matrix_args(self, **overrides: Any) -> dict[str, Any]:
        token_file = self.tmp / "bot-token"
        token_file.write_text(self.people.bot.access_token)
        token_file.chmod(0o600)
        args: dict[str, Any] = {
            "homeserver": self.synapse.url, "user_id": self.people.bot.user_id,
            "access_token": {"file": str(token_file)}, "store_path": str(self.tmp / "store"),
            "allow": {"users": [self.people.alice.user_id, self.people.bob.user_id]},
            "rate_limit": {"requests": 100, "per_seconds": 60}, "max_tokens": 16,
            "streaming": {"edit_interval": EDIT_INTERVAL_S, "max_message_chars": 1000},
            "request_defaults": {"ignore_eos": True}, "encryption": True,
            "sync": {"timeout_ms": 5000, "backoff_initial": 0.2, "backoff_max": 1.0},
            "lease": {"check_every": 1.0},
        }
        args.update(overrides)
        return args

    def deploy(self, matrix: dict[str, Any], env: dict[str, str] | None = None) -> None:
        port = int(self.serve_stack.base_url.rsplit(":", 1)[1])
        config = yaml.safe_load(write_serve_config(self.tmp / "base.yaml", port, self.serve_stack.ready_file).read_text())
        slow_health = {"interval": 60, "timeout": 5}
        backends = [
            {"name": "proxied", "kind": "openai", "url": f"http://127.0.0.1:{self.proxy_port}", "models": [MODEL],
             "tier": 0, "health": slow_health, "timeouts": {"connect": 2, "first_byte": 60, "idle": 10}},
            {"name": "engine", "kind": "openai", "url": self.serve_stack.base_url, "models": [MODEL], "tier": 1,
             "health": {"interval": 5, "timeout": 5}},
        ]
        app: dict[str, Any] = {"name": APP, "route_prefix": f"/{APP}", "import_path": "serve_apps.router.app:build_router_app",
                               "args": {"backends": backends, "matrix": matrix}}
        if env:
            app["runtime_env"] = {"env_vars": env}
        config["applications"].append(app)
        self.config_path = self.tmp / f"mbot-{time.time_ns()}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.serve_stack.cluster.deploy(self.config_path)
        self.serve_stack.cluster.wait_ready(f"{self.serve_stack.base_url}/{APP}/health", timeout_s=180)

    def remove(self) -> None:
        """Back to the session's own apps: later modules share this cluster."""
        port = int(self.serve_stack.base_url.rsplit(":", 1)[1])
        self.serve_stack.cluster.deploy(write_serve_config(self.tmp / "base.yaml", port, self.serve_stack.ready_file))

    def ray(self, code: str) -> Any:
        """Run ``code`` (which prints one JSON line) in a driver attached to the cluster."""
        script = "import json, ray\nray.init(address='auto', namespace='serve', logging_level='ERROR')\n" + code
        out = subprocess.run([sys.executable, "-c", script], env=self.serve_stack.cluster.env(), capture_output=True,
                             text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def leader(self) -> dict[str, Any]:
        """The lease holder ("replica@pid") read from the lease actor itself."""
        code = ("from serve_apps.matrix.lease import LEASE_NAMESPACE, lease_name\n"
                f"actor = ray.get_actor(lease_name({APP!r}, {self.people.bot.user_id!r}), LEASE_NAMESPACE)\n"
                "print(json.dumps(ray.get(actor.whois.remote())))")
        holder = self.ray(code)
        return {"holder": holder, "pid": int(holder.rsplit("@", 1)[1])}

    def bot_pids(self) -> list[int]:
        code = ("from ray.util.state import list_actors\n"
                "print(json.dumps([a.pid for a in list_actors(filters=[('state', '=', 'ALIVE')], limit=1000)"
                " if 'MatrixInferenceBot' in (a.class_name or '') or 'MatrixInferenceBot' in (a.name or '')]))")
        return self.ray(code)


@pytest.fixture(scope="module")
def bot_stack(serve_stack, synapse, people, tmp_path_factory) -> Iterator[BotStack]:
    stack = BotStack(serve_stack, synapse, people, tmp_path_factory.mktemp("mbot"), proxy_port=free_port())
    stack.start_proxy()
    stack.deploy(stack.matrix_args())
    try:
        yield stack
    finally:
        stack.kill_proxy()
        stack.remove()


def room_with_bot(stack: BotStack, owner: Person, encrypted: bool = False) -> str:
    room = owner.create_room([stack.people.bot.user_id], encrypted=encrypted)
    owner.wait_joined(room, stack.people.bot.user_id)
    return room
