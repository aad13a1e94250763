"""The job runner against real storage (a temp directory) and an in-process router stand-in: the
checkpoint logic, crash-and-resume at arbitrary points, cancel and expiry, in milliseconds. The same
runner runs inside the job actor in the engine tests."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from serve_apps.batch.config import BatchConfig
from serve_apps.batch.job import JobRunner
from serve_apps.batch.models import Batch, FileObject, new_id, now
from serve_apps.batch.storage import Storage


def make_batch(storage: Storage, lines: list[str], endpoint: str = "/v1/chat/completions") -> Batch:
    file_id = new_id("file-")
    data = "".join(line + "\n" for line in lines).encode()
    with storage.file_writer(file_id) as out:
        out.write(data)
    storage.save_file(FileObject(id=file_id, bytes=len(data), created_at=now(), filename="in.jsonl", purpose="batch"))
    batch = Batch(id=new_id("batch_"), endpoint=endpoint, input_file_id=file_id, created_at=now(),
                  expires_at=now() + 3600)
    storage.save_batch(batch)
    return batch


def request(i: int, model: str = "m") -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": [{"role": "user", "content": f"p{i}"}]}})


class Router:
    """Answers like the router: 200 with a body naming the prompt, 404 for an unknown model."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay

    async def __call__(self, path: str, raw: bytes, key: str | None = None) -> tuple[int, bytes]:
        body = json.loads(raw)
        prompt = body["messages"][0]["content"]
        self.calls.append(prompt)
        if self.delay:
            await asyncio.sleep(self.delay * random.random())
        if body["model"] != "m":
            return 404, json.dumps({"error": {"message": "no model", "type": "invalid_request_error",
                                              "param": None, "code": "model_not_found"}}).encode()
        return 200, json.dumps({"object": "chat.completion", "echo": prompt}).encode()


def read_file(storage: Storage, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    with storage.open_file(file_id) as handle:
        return [json.loads(line) for line in handle]


def config(tmp_path: Path, **extra) -> BatchConfig:
    return BatchConfig(storage=str(tmp_path), flush_lines=5, flush_seconds=0.05, concurrency=4, **extra)


@pytest.mark.parametrize("where", ["directory", "memory"])
def test_lifecycle_counts_and_order(tmp_path, where):
    # fsspec's in-memory filesystem stands for an object store: no local paths, rename is copy + delete
    uri = str(tmp_path) if where == "directory" else f"memory://batch-{tmp_path.name}"
    storage = Storage(uri)
    lines = [request(i) for i in range(20)] + [request(20, model="nope")]
    batch = make_batch(storage, lines)
    router = Router(delay=0.01)
    settings = BatchConfig(storage=uri, flush_lines=5, flush_seconds=0.05, concurrency=4)
    status = asyncio.run(JobRunner(settings, storage, batch.id, router).run())
    assert status == "completed"
    # Checkpointed as it went, not once at the end. How many parts depends on scheduling (a loaded
    # machine finishes several calls between size checks), but with at most 4 calls in flight a
    # part is due by line 9, and the last line's result always lands in a later one.
    assert len(storage.part_paths(batch.id)) >= 2
    done = storage.get_batch(batch.id)
    assert done.request_counts.model_dump() == {"total": 21, "completed": 20, "failed": 1}
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = read_file(storage, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(20)]  # input order
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    assert output[3]["response"]["body"]["echo"] == "p3"
    errors = read_file(storage, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["r20"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_bad_file_fails_with_line_numbers(tmp_path):
    storage = Storage(str(tmp_path))
    lines = [request(0), "{not json", request(0), json.dumps({"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
             json.dumps({"custom_id": "y", "method": "POST", "url": "/v1/embeddings", "body": {}}),
             json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
             json.dumps({"custom_id": "z", "method": "POST", "url": "/v1/completions", "body": {}})]
    batch = make_batch(storage, lines)
    router = Router()
    assert asyncio.run(JobRunner(config(tmp_path), storage, batch.id, router).run()) == "failed"
    failed = storage.get_batch(batch.id)
    found = {(e.line, e.code) for e in failed.errors.data}
    assert found == {(2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "invalid_method"),
                     (5, "invalid_url"), (6, "missing_required_parameter"), (7, "mismatched_endpoint")}
    assert failed.failed_at and router.calls == []


def test_killed_twice_resumes_exactly_once(tmp_path):
    """Stop the job abruptly (its task cancelled, nothing of it runs again: a SIGKILL's effect on
    storage) twice at different points, then let a fresh runner finish."""
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [request(i) for i in range(60)])
    calls = 0

    async def run_until(kill_after: int | None) -> str | None:
        nonlocal calls
        router = Router(delay=0.005)
        runner = JobRunner(config(tmp_path), storage, batch.id, router)
        task = asyncio.create_task(runner.run())
        while kill_after is not None and len(router.calls) < kill_after:
            await asyncio.sleep(0.001)
        if kill_after is not None:
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None
        finally:
            calls += len(router.calls)

    for kill_after in (17, 23):
        assert asyncio.run(run_until(kill_after)) is None
        assert storage.get_batch(batch.id).status == "in_progress"
        assert storage.part_paths(batch.id), "the killed run checkpointed nothing"
    assert asyncio.run(run_until(None)) == "completed"
    done = storage.get_batch(batch.id)
    output = read_file(storage, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(60)]  # once each, in order
    assert done.request_counts.completed == 60
    # Work redone per kill is bounded by the calls in flight (concurrency 4) plus the unflushed buffer:
    # under flush_lines (5) at a size check, and at most 4 more results land before the next one.
    # Redoing everything would be 17 + 23 + 60 = 100 calls.
    assert calls <= 60 + 2 * (4 + 4 + 4)


def test_cancel_keeps_finished_results(tmp_path):
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [request(i) for i in range(200)])

    async def scenario() -> str:
        runner = JobRunner(config(tmp_path), storage, batch.id, Router(delay=0.02))
        task = asyncio.create_task(runner.run())
        while (storage.get_batch(batch.id).request_counts.completed or 0) < 10:
            await asyncio.sleep(0.01)
        storage.request_cancel(batch.id)
        return await task

    assert asyncio.run(scenario()) == "cancelled"
    done = storage.get_batch(batch.id)
    output = read_file(storage, done.output_file_id)
    assert 10 <= len(output) < 200
    assert len({o["custom_id"] for o in output}) == len(output) == done.request_counts.completed
    assert done.cancelling_at and done.cancelled_at


def test_expired_lines_go_to_the_error_file(tmp_path):
    storage = Storage(str(tmp_path))
    batch = make_batch(storage, [request(i) for i in range(5)])
    storage.save_batch(batch.model_copy(update={"expires_at": now() - 1}))
    assert asyncio.run(JobRunner(config(tmp_path), storage, batch.id, Router()).run()) == "expired"
    done = storage.get_batch(batch.id)
    errors = read_file(storage, done.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 5
    assert done.output_file_id is None and done.expired_at


class Handle:
    """The router's DeploymentHandle as the job host uses it: ``options(stream=True).batch_calls.remote(
    requests)``, an async iterator of lists of ``(index, status, body)``."""

    def __init__(self, router: Router) -> None:
        self.batch_calls = self
        self.router = router

    def options(self, stream: bool) -> Handle:
        assert stream
        return self

    async def remote(self, requests: list[tuple[str, bytes, str | None]]):
        answers = await asyncio.gather(*(self.router(*request) for request in requests))
        yield [(index, status, body) for index, (status, body) in enumerate(answers)]


def test_the_job_host_runs_each_batch_once_however_often_asked(tmp_path):
    from serve_apps.batch.job import BatchJobs

    config = BatchConfig(storage=str(tmp_path), flush_seconds=0.05)
    storage = Storage(config.storage)
    first, second = (make_batch(storage, [request(i + 10 * n) for i in range(10)]) for n in range(2))
    router = Router(delay=0.01)

    async def run():
        host = BatchJobs(config.model_dump(), "app", "Router")
        host._handle = Handle(router)
        # every router replica asks, every supervisor round, often at the same moment: each batch runs once
        states = await asyncio.gather(*(host.run(batch.id) for batch in (first, second, first, second, first)))
        results = await asyncio.gather(*host._tasks.values())
        await host.run(first.id)  # finished: nothing is sent again
        await host.run("batch_missing")
        return states, results, await asyncio.gather(*host._tasks.values())

    states, results, later = asyncio.run(run())
    assert sorted(states) == ["running"] * 3 + ["started"] * 2
    assert results == ["completed", "completed"] and later == ["completed", "completed", "missing"]
    assert sorted(router.calls) == sorted(f"p{i}" for i in [*range(10), *range(10, 20)])  # every line once
    assert all(storage.get_batch(b.id).status == "completed" for b in (first, second))
