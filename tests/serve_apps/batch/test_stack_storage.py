"""Stacks do not share each other's batch files (issue #27, item 4): the default storage is a
directory of each stack's own (router app and front door), the same again when the stack restarts.

The real thing on a Ray cluster of its own (``HOME`` pointed at a temp directory, so the default
``~/.cache/...`` lands there): two router apps at their defaults, a file uploaded to one is neither
listed nor deletable by the other, and the app's router replica SIGKILLed and replaced by Serve finds
its file again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from launchers.local import LocalCluster, free_port
from serve_apps.batch.config import DEFAULT_STORAGE, BatchConfig
from serve_apps.batch.stack import for_stack, stack_storage
from tests.serve_apps.batch.conftest import pids_titled, sigkill
from tests.serve_apps.router.conftest import ROOT, FakeBackend
from tests.serve_apps.router.fake_backend import MODEL
from tests.serve_apps.router.helpers import wait_for


def test_the_default_storage_is_per_app_and_front_door():
    one = stack_storage("router", ("127.0.0.1", 8000))
    assert one == f"{DEFAULT_STORAGE}/router@127.0.0.1-8000" == stack_storage("router", ("127.0.0.1", 8000))
    assert len({one, stack_storage("router", ("127.0.0.1", 8100)), stack_storage("other", ("127.0.0.1", 8000)),
                stack_storage("router", ("0.0.0.0", 8000))}) == 4
    assert stack_storage("../x y", None) == f"{DEFAULT_STORAGE}/.._x_y"  # one path component, never a climb
    configured = BatchConfig(storage="s3://bucket/batch")
    assert for_stack(configured, "router") is configured


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    home = tmp_path_factory.mktemp("home")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray = LocalCluster(extra_env={"PYTHONPATH": pythonpath, "HOME": str(home)}).start()
    try:
        yield ray, home
    finally:
        ray.stop()


def deploy(ray: LocalCluster, workdir: Path, port: int, apps: list[str], backend: FakeBackend) -> dict[str, str]:
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": name, "route_prefix": f"/{name}", "import_path": "serve_apps.router.app:build_router_app",
         "args": {"backends": [{"name": "a", "kind": "openai", "url": backend.url, "models": [MODEL]}]}}
        for name in apps]}
    path = workdir / f"serve-{'-'.join(apps)}.yaml"
    path.write_text(yaml.safe_dump(config))
    ray.deploy(path)
    urls = {name: f"http://127.0.0.1:{port}/{name}" for name in apps}
    for url in urls.values():
        ray.wait_ready(f"{url}/health", timeout_s=180)
    return urls


def test_two_stacks_at_their_defaults_do_not_see_each_others_files(cluster, tmp_path):
    ray, home = cluster
    backend = FakeBackend("openai").start()
    try:
        port = free_port()
        urls = deploy(ray, tmp_path, port, ["one", "two"], backend)
        uploaded = httpx.post(f"{urls['one']}/v1/files", data={"purpose": "batch"},
                              files={"file": ("in.jsonl", b'{"custom_id": "x"}\n')}, timeout=30).json()
        assert httpx.get(f"{urls['one']}/v1/files", timeout=30).json()["data"][0]["id"] == uploaded["id"]
        assert httpx.get(f"{urls['two']}/v1/files", timeout=30).json()["data"] == []
        refused = httpx.delete(f"{urls['two']}/v1/files/{uploaded['id']}", timeout=30)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
        root = home / ".cache" / "ray-serve-cai" / "batch"
        assert (root / f"one@127.0.0.1-{port}" / "files" / f"{uploaded['id']}.jsonl").exists()
        # the stack's router restarts (a new replica works its storage out again): its files are there
        killed = sigkill("ray::ServeReplica:one:MultiBackendRouter")
        wait_for(lambda: files(urls["one"]) == [uploaded["id"]] and killed not in replica_pids(), timeout=120,
                 message="app one's new router replica listing its file")
    finally:
        backend.kill()


def files(url: str) -> list[str] | None:
    try:
        return [f["id"] for f in httpx.get(f"{url}/v1/files", timeout=10).json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError):
        return None  # the replica is being replaced


def replica_pids() -> list[int]:
    return pids_titled("ray::ServeReplica:one:MultiBackendRouter")
