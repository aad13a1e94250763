"""A real Synapse homeserver for the Matrix bot tests and benchmark: one process on 127.0.0.1, sqlite in a
temp dir, started from the venv that ``scripts/setup-test-services.sh`` builds (Synapse is AGPL: run,
never imported)."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from launchers.local import free_port
from launchers.polling import poll_until

ROOT = Path(__file__).resolve().parents[1]
SYNAPSE_PYTHON = ROOT / ".tools" / "synapse-venv" / "bin" / "python"
SERVER_NAME = "rsc.test"
SHARED_SECRET = "test-registration-secret"
# Relaxed so the tests measure the bot, not Synapse's flood control.
RELAXED = {"per_second": 1000, "burst_count": 1000}


def synapse_config(directory: Path, port: int) -> dict:
    return {
        "server_name": SERVER_NAME,
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                       "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "media_store_path": str(directory / "media"),
        "signing_key": "ed25519 a_test 2Z0N7LzbUo1WpLdkWMF1mYmhwZQ6rOBdv3Bn5iGFZxE",
        "registration_shared_secret": SHARED_SECRET,
        "report_stats": False,
        "bcrypt_rounds": 4,
        "trusted_key_servers": [],
        "federation_domain_whitelist": [],
        "suppress_key_server_warning": True,
        "enable_metrics": False,
        "log_config": str(directory / "log.yaml"),
        "rc_message": RELAXED, "rc_registration": RELAXED, "rc_joins": {"local": RELAXED, "remote": RELAXED},
        "rc_login": {"address": RELAXED, "account": RELAXED, "failed_attempts": RELAXED},
        "rc_invites": {"per_room": RELAXED, "per_user": RELAXED, "per_issuer": RELAXED},
        "rc_admin_redaction": RELAXED, "rc_3pid_validation": RELAXED,
        "rc_key_requests": RELAXED, "rc_presence": {"per_user": RELAXED},
    }


LOG_CONFIG = {
    "version": 1,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain", "filename": "PLACEHOLDER"}},
    "root": {"level": "WARNING", "handlers": ["file"]},
    "disable_existing_loggers": False,
}


@dataclass
class Synapse:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Synapse:
        if not SYNAPSE_PYTHON.exists():
            raise RuntimeError(f"{SYNAPSE_PYTHON} missing: run scripts/setup-test-services.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "homeserver.yaml"
        config_path.write_text(yaml.safe_dump(synapse_config(self.directory, self.port)))
        log_config = dict(LOG_CONFIG, handlers={"file": {**LOG_CONFIG["handlers"]["file"], "filename": str(self.directory / "synapse.log")}})
        (self.directory / "log.yaml").write_text(yaml.safe_dump(log_config))
        self.process = subprocess.Popen(
            [str(SYNAPSE_PYTHON), "-m", "synapse.app.homeserver", "-c", str(config_path)],
            cwd=self.directory, stdout=subprocess.DEVNULL, stderr=open(self.directory / "stderr.log", "ab"),
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        )
        poll_until(self._ready, timeout, 0.1)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"synapse exited: {(self.directory / 'stderr.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/_matrix/client/versions", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def register(self, localpart: str, password: str = "pw-0123456789", admin: bool = False) -> dict:
        """Register a user through the shared-secret admin API; returns user_id, access_token, device_id."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        nonce = httpx.get(endpoint, timeout=10).json()["nonce"]
        message = b"\x00".join(p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin"))
        mac = hmac.new(SHARED_SECRET.encode(), message, hashlib.sha1).hexdigest()
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac}
        response = httpx.post(endpoint, json=body, timeout=30)
        response.raise_for_status()
        return response.json()
