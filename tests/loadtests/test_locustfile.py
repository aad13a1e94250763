"""The shipped locustfile drives real servers headless, bounded in users and time: the engine app for
chat and streaming users, a router in front of it for pinned-backend, ``/v1/batch`` and OpenAI-batch
users."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_serve_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def locust(host: str, prefix: Path, *options: str, seconds: int = 6, exit_code: int = 0) -> dict[str, dict[str, str]]:
    """A headless run; locust exits 1 when any request failed."""
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "--host", host, "-u", "4", "-r", "4", "-t", f"{seconds}s", "--csv", str(prefix), "--only-summary",
           "--stop-timeout", "60", "--max-tokens", "4", *options]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == exit_code, result.stderr[-2000:]
    return {row["Name"]: row for row in csv.DictReader(open(f"{prefix}_stats.csv"))}


@pytest.mark.parametrize(("mix", "entry"), [("stream:1", "chat (stream)"), ("chat:1", "chat")])
def test_chat_users_have_no_failures(serve_stack, tmp_path, mix, entry):
    rows = locust(serve_stack.base_url, tmp_path / "stats", "--mix", mix)
    assert int(rows[entry]["Request Count"]) > 0
    assert int(rows[entry]["Failure Count"]) == 0
    assert ("TTFT" in rows) == (mix == "stream:1")


@pytest.fixture()
def router_url(serve_stack, tmp_path):
    """A router app (batch on) in front of the engine app, deployed next to it, removed afterwards."""
    port = int(serve_stack.base_url.rsplit(":", 1)[1])
    base = write_serve_config(tmp_path / "base.yaml", port, serve_stack.ready_file)
    config = yaml.safe_load(base.read_text())
    config["applications"].append({
        "name": "router", "route_prefix": "/router", "import_path": "serve_apps.router.app:build_router_app",
        "args": {"backends": [{"name": "engine", "kind": "openai", "url": serve_stack.base_url, "models": ["tiny-chat"]}],
                 "batch": {"storage": str(tmp_path / "batch"), "supervise_seconds": 1}}})
    with_router = tmp_path / "with-router.yaml"
    with_router.write_text(yaml.safe_dump(config))
    serve_stack.cluster.deploy(with_router)
    try:
        serve_stack.cluster.wait_ready(f"{serve_stack.base_url}/router/health", timeout_s=300)
        yield f"{serve_stack.base_url}/router"
    finally:
        serve_stack.cluster.deploy(base)


def test_pinned_batch_and_openai_batch_users_against_the_router(router_url, tmp_path):
    rows = locust(router_url, tmp_path / "stats", "--mix", "pinned:1,batch:1,openai-batch:2", "--backend", "engine",
                  "--batch-prompts", "3", seconds=15)
    for entry in ("chat (pinned)", "/v1/batch", "openai batch"):
        assert int(rows[entry]["Request Count"]) > 0, entry
        assert int(rows[entry]["Failure Count"]) == 0, entry


def test_a_pinned_user_reports_an_unknown_backend(router_url, tmp_path):
    """The router answers 4xx for a backend it does not have: every pinned request is a failure."""
    rows = locust(router_url, tmp_path / "stats", "--mix", "pinned:1", "--backend", "nope", seconds=4, exit_code=1)
    assert int(rows["chat (pinned)"]["Failure Count"]) == int(rows["chat (pinned)"]["Request Count"]) > 0
