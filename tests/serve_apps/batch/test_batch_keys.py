"""Every batch ingress acts for the caller's key (issue #25, "the hole"): ``POST /v1/batch`` items and
every line of an OpenAI batch get the key's allow-lists, limits and token account, and files and
batches are visible only to the key that created them.

The router is the real ``Router`` in process behind its real ASGI face (``RouterASGI``) with the real
batch routes (``BatchService``) as its route hook; its only backend is a real fake backend process.
Jobs are the real ``JobRunner`` on a temp directory, sending through the real ``GroupedSender`` ->
``BatchService.calls`` path the job host uses (only Ray's deployment handle between them is left out).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve_apps.batch.config import BatchConfig
from serve_apps.batch.job import JobRunner
from serve_apps.batch.sender import GroupedSender
from serve_apps.batch.service import BatchService
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.backends import create_backend
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router
from tests.serve_apps.router.conftest import FakeBackend
from tests.serve_apps.router.fake_backend import MODEL

SECRETS = {"narrow": "sk-narrow-0123456789", "slow": "sk-slow-0123456789", "wide": "sk-wide-0123456789",
           "other": "sk-other-0123456789"}
TPM = 10  # an answer below costs 3 prompt + 4 completion tokens: two answers per window, the third waits
WINDOW_S = 1.0  # the limiter's window, a minute in production


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, secret in SECRETS.items():
        monkeypatch.setenv(f"KEY_{name.upper()}", secret)


class InlineJobs:
    """The supervisor's contract (``ensure``, ``cancel``): each batch's job on the test's loop, its
    lines sent through the path the job host uses."""

    def __init__(self, service: BatchService, loop: asyncio.AbstractEventLoop) -> None:
        self.service, self.loop = service, loop
        self.tasks: list[asyncio.Task[str]] = []

    def ensure(self, batch_id: str) -> None:  # called from a worker thread, as the API does
        self.loop.call_soon_threadsafe(self.start, batch_id)

    def start(self, batch_id: str) -> None:
        runner = JobRunner(self.service.config, self.service.storage, batch_id, GroupedSender(self.service.calls))
        self.tasks.append(self.loop.create_task(runner.run()))

    def cancel(self, batch_id: str) -> None:
        pass  # the runner sees the cancel marker in storage

    async def finished(self) -> None:
        while not self.tasks or not all(task.done() for task in self.tasks):
            await asyncio.sleep(0.02)
        await asyncio.gather(*self.tasks)


class Stack:
    def __init__(self, router: Router, service: BatchService, jobs: InlineJobs) -> None:
        self.router, self.service, self.jobs = router, service, jobs
        self.transport = httpx.ASGITransport(app=RouterASGI(router, service))

    def http(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, base_url="http://test",
                                 headers={"authorization": f"Bearer {SECRETS[key]}"})

    def openai(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://test/v1", api_key=SECRETS[key], max_retries=0,
                                  http_client=httpx.AsyncClient(transport=self.transport, base_url="http://test"))

    def tokens(self, key: str) -> list[int]:
        return self.router.metrics.tokens_used.get((key, MODEL, "a"), [0, 0])


def with_stack(fake: FakeBackend, tmp_path: Path, scenario: Callable[[Stack], Awaitable[None]], **batch: Any) -> None:
    config = RouterConfig.model_validate({
        "backends": [{"name": "a", "kind": "openai", "url": fake.url, "models": [MODEL], "timeouts": {"connect": 1},
                      "health": {"interval": 0.5, "timeout": 1}}],
        "auth": {"keys": [{"name": "narrow", "key": {"env": "KEY_NARROW"}, "models": ["another-model"]},
                          {"name": "slow", "key": {"env": "KEY_SLOW"}, "tokens_per_minute": TPM},
                          {"name": "wide", "key": {"env": "KEY_WIDE"}},
                          {"name": "other", "key": {"env": "KEY_OTHER"}}]}})
    settings = BatchConfig(storage=str(tmp_path / "storage"), flush_lines=4, flush_seconds=0.05, **batch)

    async def run() -> None:
        router = Router(config, [create_backend(b, None) for b in config.backends])
        router.limiter.window = WINDOW_S
        router.start()
        while not router.ready:  # the backend's first health probe
            await asyncio.sleep(0.01)
        service = BatchService(settings, router, "router", "MultiBackendRouter")
        jobs = InlineJobs(service, asyncio.get_running_loop())
        service.api.supervisor = jobs  # type: ignore[assignment] - jobs run inline instead of on Ray
        try:
            await scenario(Stack(router, service, jobs))
        finally:
            await router.aclose()

    asyncio.run(run())


def input_file(count: int, model: str = MODEL) -> bytes:
    return "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": model, "max_tokens": 4,
                                        "messages": [{"role": "user", "content": f"prompt number {i}"}]}}) + "\n"
                   for i in range(count)).encode()


async def run_batch(stack: Stack, key: str, lines: bytes) -> Any:
    """Upload, create, wait for the end: the finished batch as its owner sees it."""
    client = stack.openai(key)
    uploaded = await client.files.create(file=("in.jsonl", lines), purpose="batch")
    created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
    await stack.jobs.finished()
    return await client.batches.retrieve(created.id)


async def lines_of(stack: Stack, key: str, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await stack.openai(key).files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


def usage_total(lines: list[dict[str, Any]]) -> list[int]:
    usages = [line["response"]["body"]["usage"] for line in lines]
    return [sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)]


def test_batch_prompts_act_for_the_callers_key(fake, keys, tmp_path):
    fake.ensure()

    async def scenario(stack: Stack) -> None:
        before = fake.requests()
        body = {"prompts": ["one", "two"], "model": MODEL, "params": {"max_tokens": 4}}
        refused = await stack.http("narrow").post("/v1/batch", json=body)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "model_not_found" and "narrow" in refused.json()["error"]["message"]
        assert fake.requests() == before  # refused before any backend was asked
        served = await stack.http("wide").post("/v1/batch", json=body)
        assert served.status_code == 200
        results = served.json()["results"]
        assert [r["object"] for r in results] == ["chat.completion"] * 2
        assert stack.tokens("wide") == [sum(r["usage"]["prompt_tokens"] for r in results),
                                        sum(r["usage"]["completion_tokens"] for r in results)]
        assert stack.tokens("narrow") == [0, 0]

    with_stack(fake, tmp_path, scenario)


def test_openai_batch_lines_act_for_the_key_that_created_the_batch(fake, keys, tmp_path):
    fake.ensure()

    async def scenario(stack: Stack) -> None:
        before = fake.requests()
        narrow = await run_batch(stack, "narrow", input_file(3))
        assert narrow.status == "completed" and narrow.request_counts.failed == 3, narrow
        errors = await lines_of(stack, "narrow", narrow.error_file_id)
        assert [(e["response"]["status_code"], e["response"]["body"]["error"]["code"]) for e in errors] == \
            [(404, "model_not_found")] * 3
        assert fake.requests() == before and narrow.output_file_id is None
        wide = await run_batch(stack, "wide", input_file(3))
        assert wide.status == "completed" and wide.request_counts.completed == 3, wide
        assert stack.tokens("wide") == usage_total(await lines_of(stack, "wide", wide.output_file_id))
        # the job found its key in storage, by name: no secret is stored anywhere
        stored = json.loads((tmp_path / "storage" / "batches" / narrow.id / "batch.json").read_text())
        assert stored["owner"] == "narrow"
        everything = b"".join(p.read_bytes() for p in (tmp_path / "storage").rglob("*") if p.is_file())
        assert not any(secret.encode() in everything for secret in SECRETS.values())

    with_stack(fake, tmp_path, scenario)


def test_a_batch_whose_key_was_removed_runs_as_nobody(fake, keys, tmp_path):
    """A resumed batch acts for its stored owner; a key gone from the config is 401, never anonymous."""
    fake.ensure()

    async def scenario(stack: Stack) -> None:
        client = stack.openai("wide")
        uploaded = await client.files.create(file=("in.jsonl", input_file(2)), purpose="batch")
        stack.jobs.ensure = lambda batch_id: None  # type: ignore[method-assign] - created now, resumed below
        created = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")
        storage = stack.service.storage
        storage.save_batch(storage.get_batch(created.id).model_copy(update={"owner": "retired"}))
        before = fake.requests()
        stack.jobs.start(created.id)
        await stack.jobs.finished()
        done = storage.get_batch(created.id)
        assert done.request_counts.failed == 2 and fake.requests() == before
        for line in (json.loads(raw) for _, _, raw in storage.merged_results(created.id)):
            assert line["response"]["status_code"] == 401
            assert line["response"]["body"]["error"]["code"] == "invalid_api_key"

    with_stack(fake, tmp_path, scenario)


def rate_limited(router: Router, key: str) -> float:
    for line in router.metrics.exposition().decode().splitlines():
        if line.startswith("ray_router_rate_limited_count_total{") and f'key="{key}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_limited_keys_batch_waits_for_its_tokens_per_minute(fake, keys, tmp_path):
    """Six lines of 7 tokens under a limit of 10 a window: two lines a window, the others refused
    (429) and retried in a later window, never failed; the key's counters hold every line's usage."""
    fake.ensure()

    async def scenario(stack: Stack) -> None:
        started = time.monotonic()
        done = await run_batch(stack, "slow", input_file(6))
        elapsed = time.monotonic() - started
        assert done.status == "completed" and done.request_counts.completed == 6 and done.request_counts.failed == 0
        assert rate_limited(stack.router, "slow") > 0
        assert elapsed > WINDOW_S  # three windows' worth of lines: two window boundaries passed
        assert stack.tokens("slow") == usage_total(await lines_of(stack, "slow", done.output_file_id))

    with_stack(fake, tmp_path, scenario, concurrency=1)


def test_files_and_batches_are_visible_only_to_the_key_that_created_them(fake, keys, tmp_path):
    fake.ensure()

    async def scenario(stack: Stack) -> None:
        done = await run_batch(stack, "wide", input_file(1))
        owner, other = stack.http("wide"), stack.http("other")
        (input_id, output_id) = (done.input_file_id, done.output_file_id)
        for client, sees in ((owner, True), (other, False)):
            files = (await client.get("/v1/files")).json()["data"]
            batches = (await client.get("/v1/batches")).json()["data"]
            assert sorted(f["id"] for f in files) == (sorted([input_id, output_id]) if sees else [])
            assert [b["id"] for b in batches] == ([done.id] if sees else [])
            assert all("owner" not in item for item in files + batches)  # kept, never shown
        for method, path in (("GET", f"/v1/files/{input_id}"), ("GET", f"/v1/files/{output_id}/content"),
                             ("DELETE", f"/v1/files/{output_id}"), ("GET", f"/v1/batches/{done.id}"),
                             ("POST", f"/v1/batches/{done.id}/cancel")):
            refused = await other.request(method, path)
            assert refused.status_code == 404, (method, path, refused.text)
            assert refused.json()["error"]["type"] == "invalid_request_error"
        reuse = await other.post("/v1/batches", json={"input_file_id": input_id, "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"})
        assert reuse.status_code == 404 and reuse.json()["error"]["param"] == "input_file_id"
        assert (await owner.get(f"/v1/files/{output_id}/content")).status_code == 200  # still the owner's
        assert (await owner.delete(f"/v1/files/{output_id}")).json()["deleted"]

    with_stack(fake, tmp_path, scenario)
