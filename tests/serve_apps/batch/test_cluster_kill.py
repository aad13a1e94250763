"""The whole Ray cluster SIGKILLed mid-batch, twice: a router app with batch on a Ray cluster of its
own (its backend is the session's vLLM engine, reached over HTTP, so it survives), every process of
that cluster SIGKILLed while the batch runs, a new cluster started on the same storage -- its router
replica picks the unfinished batch up from storage, and every custom_id ends up in the output once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest
import yaml

from launchers.local import LocalCluster, free_port
from launchers.procs import descendants, running
from tests.conftest import MODEL, ROOT
from tests.serve_apps.batch.test_batch_api import jsonl, line, upload, wait_done
from tests.serve_apps.router.helpers import backends, wait_for

pytestmark = pytest.mark.engine


def router_cluster(storage: Path | str, engine_url: str, workdir: Path,
                   env: dict[str, str] | None = None) -> tuple[LocalCluster, str]:
    """A new Ray cluster (``env`` added to its processes' environment) running only the router app,
    batch on ``storage``; returns it and its URL."""
    port = free_port()
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app", "args": {
            "backends": [{"name": "engine", "kind": "openai", "url": engine_url, "models": [MODEL],
                          "timeouts": {"connect": 2, "first_byte": 60, "idle": 30}}],
            "batch": {"storage": str(storage), "flush_lines": 8, "flush_seconds": 0.2, "supervise_seconds": 1,
                      "concurrency": 8}}}]}
    path = workdir / f"router-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster = LocalCluster(extra_env={"PYTHONPATH": str(ROOT), **(env or {})}).start()
    try:
        cluster.deploy(path)
        url = f"http://127.0.0.1:{port}"
        cluster.wait_ready(f"{url}/health", timeout_s=180)
        wait_for(lambda: backends(url)["engine"]["healthy"], timeout=60, message="the engine backend healthy")
    except BaseException:
        cluster.stop()
        raise
    return cluster, url


def sigkill_cluster(cluster: LocalCluster) -> None:
    """SIGKILL every process of the cluster at once: GCS, raylet, agents, controller, replicas, job actor."""
    assert cluster.process is not None
    tree = [cluster.process.pid, *descendants(cluster.process.pid)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.process.wait(10)
    deadline = time.monotonic() + 20
    while running(tree) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_whole_cluster_killed_twice_mid_batch_resumes_exactly_once(serve_stack, tmp_path):
    storage = tmp_path / "storage"
    total = 300
    lines = [line(f"c{i}", f"cluster {i}", max_tokens=32, ignore_eos=True) for i in range(total)]
    cluster, url = router_cluster(storage, serve_stack.base_url, tmp_path)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                      completion_window="24h")
        kills = []
        for at_least in (40, 120):
            deadline = time.monotonic() + 180
            while (done := client.batches.retrieve(batch.id).request_counts.completed) < at_least:
                assert time.monotonic() < deadline, "the batch made no progress"
                time.sleep(0.1)
            assert done < total, "too fast to kill mid-run"
            sigkill_cluster(cluster)
            kills.append(done)
            cluster, url = router_cluster(storage, serve_stack.base_url, tmp_path)
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
            assert client.batches.retrieve(batch.id).status in ("in_progress", "finalizing", "completed")
        finished = wait_done(client, batch.id, timeout=300)
        output = jsonl(client, finished.output_file_id)
    finally:
        cluster.stop()
    assert finished.status == "completed", finished
    assert [o["custom_id"] for o in output] == [f"c{i}" for i in range(total)]  # every line once, in order
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert finished.request_counts.completed == total and finished.request_counts.failed == 0
    assert kills[0] < kills[1] < total
