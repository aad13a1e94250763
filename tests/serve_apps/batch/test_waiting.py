"""Batch lines wait out a backend's restart instead of failing (issue #27, item 1).

The router is the real ``Router`` in process with the real ``BatchService`` routes the job host calls
(``GroupedSender`` -> ``BatchService.calls`` -> ``Router.generate``); its only backend is a real fake
backend process that the tests SIGKILL and start again on the same port, or make answer 503 as an
engine still starting does. The job is the real ``JobRunner`` on a temp directory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from serve_apps.batch.config import BatchConfig
from serve_apps.batch.endpoint import PromptsEndpoint
from serve_apps.batch.job import JobRunner
from serve_apps.batch.models import WAITING_KEY, Batch, now
from serve_apps.batch.sender import GroupedSender
from serve_apps.batch.service import BatchService
from serve_apps.batch.storage import Storage
from serve_apps.router.backends import create_backend
from serve_apps.router.config import RouterConfig
from serve_apps.router.keys import ANONYMOUS_KEY
from serve_apps.router.router import Router
from tests.serve_apps.batch.test_job_runner import make_batch, read_file
from tests.serve_apps.router.conftest import FakeBackend
from tests.serve_apps.router.fake_backend import MODEL, plan


@pytest.fixture
def backend(fake: FakeBackend) -> FakeBackend:
    return fake.ensure()


def settings(tmp_path: Path, **extra: Any) -> BatchConfig:
    # retries=1: before the fix a line met a down backend twice, a second apart, and failed for good
    return BatchConfig(storage=str(tmp_path), flush_lines=5, flush_seconds=0.05, concurrency=4, retries=1, **extra)


def with_router(fake: FakeBackend, scenario: Callable[[Router], Awaitable[None]]) -> None:
    config = RouterConfig.model_validate({"backends": [
        {"name": "a", "kind": "openai", "url": fake.url, "models": [MODEL],
         "timeouts": {"connect": 1}, "health": {"interval": 0.5, "timeout": 1}}]})

    async def run() -> None:
        router = Router(config, [create_backend(b, None) for b in config.backends])
        router.start()
        try:
            await scenario(router)
        finally:
            await router.aclose()

    asyncio.run(run())


def line(i: int) -> str:
    return json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": f"prompt number {i}"}]}})


def runner(config: BatchConfig, storage: Storage, batch: Batch, router: Router) -> JobRunner:
    service = BatchService(config, router, "router", "MultiBackendRouter")
    return JobRunner(config, storage, batch.id, GroupedSender(service.calls))


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def recorded(storage: Storage, batch_id: str) -> int:
    return sum(1 for _ in storage.merged_results(batch_id))


def waiting_note(storage: Storage, batch_id: str) -> str | None:
    stored = storage.get_batch(batch_id)
    return stored.waiting() if stored else None


async def started(job: JobRunner, storage: Storage, batch_id: str) -> asyncio.Task[str]:
    """``job`` running, with its first results recorded."""
    task = asyncio.create_task(job.run())
    await until(lambda: recorded(storage, batch_id) >= 20, 30, "the first results")
    return task


async def waits_failing_nothing(storage: Storage, batch_id: str, *why: str) -> None:
    """The batch says it waits, and why (one of ``why``); for longer than a line's old retries it fails no line."""
    note = await until(lambda: waiting_note(storage, batch_id), 10, "the batch saying why it waits")
    assert any(reason in note for reason in why), note
    await asyncio.sleep(4)
    assert storage.get_batch(batch_id).status == "in_progress"
    assert not any(kind == "e" for _, kind, _ in storage.merged_results(batch_id)), "a line failed"


def assert_all_answered(storage: Storage, batch_id: str, count: int) -> None:
    """Completed, nothing failed, every custom_id once, each answer the one its prompt gets undisturbed."""
    done = storage.get_batch(batch_id)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": count, "completed": count, "failed": 0}
    assert done.error_file_id is None and WAITING_KEY not in (done.metadata or {})
    output = read_file(storage, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"c{i}" for i in range(count)]
    for i, result in enumerate(output):
        assert result["response"]["status_code"] == 200
        expected = "".join(plan(f"prompt number {i}", "", 16)[0])
        assert result["response"]["body"]["choices"][0]["message"]["content"] == expected


def test_a_batch_waits_out_its_only_backend_killed_and_restarted(tmp_path, backend):
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [line(i) for i in range(200)])
    config = settings(tmp_path)

    async def scenario(router: Router) -> None:
        job = await started(runner(config, storage, batch, router), storage, batch.id)
        backend.kill()
        # Lines in flight when it died fail with "disconnect", later ones with "connect": the note may say either.
        await waits_failing_nothing(storage, batch.id, "all backends failed: a: connect", "all backends failed: a: disconnect")
        backend.start()
        assert await asyncio.wait_for(job, 60) == "completed"

    with_router(backend, scenario)
    assert_all_answered(storage, batch.id, 200)


def test_a_resumed_job_waits_while_the_engine_still_starts(tmp_path, backend):
    """The job host killed mid-batch and started again while the backend answers 503 (an engine that
    is still loading, behind its replica): the resumed job fails nothing and sends nothing twice."""
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [line(i) for i in range(120)])
    config = settings(tmp_path)

    async def scenario(router: Router) -> None:
        first = await started(runner(config, storage, batch, router), storage, batch.id)
        backend.control(mode="status", status=503)
        first.cancel()  # the job host dies; what it had recorded is in storage
        await asyncio.gather(first, return_exceptions=True)
        before = backend.requests()
        second = asyncio.create_task(runner(config, storage, batch, router).run())
        await waits_failing_nothing(storage, batch.id, "all backends failed: a: 503")
        assert backend.requests() > before  # it keeps trying, with backoff
        backend.control(mode="ok")
        assert await asyncio.wait_for(second, 60) == "completed"

    with_router(backend, scenario)
    assert_all_answered(storage, batch.id, 120)


def test_a_backend_that_never_returns_expires_the_batch(tmp_path, backend):
    """Lines wait until the completion window ends; then the batch is ``expired`` and every line not
    answered is in the error file as ``batch_expired`` (as OpenAI does), none as a 503."""
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [line(i) for i in range(40)])
    config = settings(tmp_path)

    async def scenario(router: Router) -> None:
        storage.save_batch(batch.model_copy(update={"expires_at": now() + 4}))
        job = await started(runner(config, storage, batch, router), storage, batch.id)
        backend.kill()
        assert await asyncio.wait_for(job, 30) == "expired"

    with_router(backend, scenario)
    done = storage.get_batch(batch.id)
    output, errors = read_file(storage, done.output_file_id), read_file(storage, done.error_file_id)
    assert done.status == "expired" and done.expired_at and errors
    assert {e["error"]["code"] for e in errors} == {"batch_expired"} and all(e["response"] is None for e in errors)
    ids = [r["custom_id"] for r in output + errors]
    assert sorted(ids) == sorted(f"c{i}" for i in range(40))
    assert done.request_counts.model_dump() == {"total": 40, "completed": len(output), "failed": len(errors)}


async def post_prompts(endpoint: PromptsEndpoint, count: int) -> dict[str, Any]:
    raw = json.dumps({"prompts": [f"item {i}" for i in range(count)], "model": MODEL}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    reply = await endpoint("POST", receive, ANONYMOUS_KEY)
    assert reply.status == 200
    return json.loads(reply.body)


def test_v1_batch_items_wait_for_a_restarting_backend(tmp_path, backend):
    async def scenario(router: Router) -> None:
        backend.kill()
        await asyncio.sleep(1)  # the router has seen it down
        call = asyncio.create_task(post_prompts(PromptsEndpoint(settings(tmp_path), router), 6))
        await asyncio.sleep(2.5)
        assert not call.done()
        backend.start()
        results = (await asyncio.wait_for(call, 30))["results"]
        assert [r["object"] for r in results] == ["chat.completion"] * 6
        assert results[4]["choices"][0]["message"]["content"] == "".join(plan("item 4", "", 16)[0])

    with_router(backend, scenario)


def test_v1_batch_items_give_up_after_the_documented_wait(tmp_path, backend):
    async def scenario(router: Router) -> None:
        backend.kill()
        started = time.monotonic()
        results = (await post_prompts(PromptsEndpoint(settings(tmp_path, endpoint_wait_seconds=1.5), router), 3))["results"]
        assert 1.5 <= time.monotonic() - started < 15
        assert [r["error"]["type"] for r in results] == ["backend_unavailable"] * 3

    with_router(backend, scenario)


def test_only_a_request_that_fails_while_others_are_served_is_failed(backend):
    """The router's real 503 for a backend that answers 500: while nothing else is served it is an
    outage (waited for until the deadline); while other requests are served it is this request's own
    fault, final after ``retries`` more tries. A 404 about the request is final at once."""
    from serve_apps.batch.waiting import Gate, Verdict, judge

    async def scenario(router: Router) -> None:
        chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
        backend.control(mode="status", status=500)
        broken = await router.generate("/v1/chat/completions", chat, None)
        backend.kill()
        down = await router.generate("/v1/chat/completions", chat, None)
        unknown = await router.generate("/v1/chat/completions", json.dumps({"model": "nope"}).encode(), None)
        assert judge(broken.status, broken.body) == (Verdict.SUSPECT, "all backends failed: a: 500")
        assert judge(down.status, down.body)[0] is Verdict.WAIT
        assert judge(unknown.status, unknown.body)[0] is Verdict.FINAL

        async def answer() -> tuple[int, bytes]:
            return broken.status, broken.body

        alone = Gate(retries=1)
        waited = await alone.send(answer, deadline=alone.clock() + 1.5)
        assert waited.expired and alone.note() and "a: 500" in alone.note()
        busy = Gate(retries=1)

        async def others_served() -> tuple[int, bytes]:
            busy.served += 1  # another line of the job was answered meanwhile
            return await answer()

        failed = await busy.send(others_served, deadline=busy.clock() + 60)
        assert not failed.expired and failed.status == 503

    with_router(backend, scenario)
