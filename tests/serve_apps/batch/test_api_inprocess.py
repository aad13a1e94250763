"""The Files and Batch routes in process (the router's real ASGI app and batch routes, jobs run by
the real ``JobRunner`` on a temp directory, the routed call answered by a stand-in), through the
``openai`` SDK: HTTP details in milliseconds. The engine tests run the same routes on Ray."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from serve_apps.batch.api import BatchAPI
from serve_apps.batch.config import BatchConfig
from serve_apps.batch.job import JobRunner
from serve_apps.batch.storage import Storage
from serve_apps.router.asgi import RouterASGI
from serve_apps.router.config import RouterConfig
from serve_apps.router.router import Router


class InlineJobs:
    """The supervisor's contract (``ensure``, ``cancel``) with jobs run on the test's own loop."""

    def __init__(self, config: BatchConfig, storage: Storage, loop: asyncio.AbstractEventLoop) -> None:
        self.config, self.storage, self.loop = config, storage, loop
        self.tasks: list[asyncio.Task] = []

    async def send(self, path: str, raw: bytes, key: str | None) -> tuple[int, bytes]:
        await asyncio.sleep(0.01)
        return 200, json.dumps({"object": "chat.completion", "echo": json.loads(raw)["messages"][0]["content"]}).encode()

    def ensure(self, batch_id: str) -> None:
        runner = JobRunner(self.config, self.storage, batch_id, self.send)
        self.loop.call_soon_threadsafe(lambda: self.tasks.append(self.loop.create_task(runner.run())))

    def cancel(self, batch_id: str) -> None:
        pass  # the runner sees the cancel marker in storage


@pytest.fixture
def api(tmp_path):
    async def make():
        config = BatchConfig(storage=str(tmp_path), flush_seconds=0.05, max_file_bytes=4096)
        storage = Storage(config.storage)
        jobs = InlineJobs(config, storage, asyncio.get_running_loop())
        batch_api = BatchAPI(config, storage, jobs)  # type: ignore[arg-type]

        async def hook(method, path, scope, receive, key):
            if path.startswith("/v1/files"):
                return await batch_api.files(method, path, scope, receive, key)
            if path.startswith("/v1/batches"):
                return await batch_api.batches(method, path, scope, receive, key)
            return None

        router = Router(RouterConfig.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://127.0.0.1:9"}]}), [])
        transport = httpx.ASGITransport(app=RouterASGI(router, hook))
        return openai.AsyncOpenAI(base_url="http://test/v1", api_key="k", max_retries=0,
                                  http_client=httpx.AsyncClient(transport=transport, base_url="http://test")), jobs
    return make


def lines(count: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"messages": [{"role": "user", "content": f"m{i}"}]}}) + "\n"
                   for i in range(count)).encode()


def test_list_pages_newest_first_and_outputs(api):
    async def scenario():
        client, jobs = await api()
        file = await client.files.create(file=("a.jsonl", lines(3)), purpose="batch")
        created = [await client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                               completion_window="24h") for _ in range(3)]
        await asyncio.gather(*jobs.tasks)
        page = await client.batches.list(limit=2)
        assert [b.id for b in page.data] == [created[2].id, created[1].id] and page.has_more
        rest = await client.batches.list(limit=2, after=page.data[-1].id)
        assert [b.id for b in rest.data] == [created[0].id] and not rest.has_more
        done = await client.batches.retrieve(created[0].id)
        assert done.status == "completed" and done.request_counts.completed == 3
        content = await client.files.content(done.output_file_id)
        assert [json.loads(x)["response"]["body"]["echo"] for x in content.text.splitlines()] == ["m0", "m1", "m2"]
        inputs = await client.files.list(purpose="batch")
        assert [f.id for f in inputs.data] == [file.id]
        outputs = await client.files.list(purpose="batch_output", limit=2)
        assert len(outputs.data) == 2 and outputs.has_more and outputs.data[0].id > outputs.data[1].id
    asyncio.run(scenario())


def test_upload_limits_and_wrong_methods(api):
    async def scenario():
        client, _ = await api()
        with pytest.raises(openai.APIStatusError) as err:
            await client.files.create(file=("big.jsonl", lines(100)), purpose="batch")
        assert err.value.status_code == 413
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("a.jsonl", lines(1)), purpose="assistants")
        raw = client._client  # the SDK's httpx client, for requests the SDK cannot make
        response = await raw.put("http://test/v1/files")
        assert response.status_code == 405 and response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["allow"] == "GET, POST"
        response = await raw.get("http://test/v1/batches?limit=0")
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit"
        response = await raw.post("http://test/v1/batches", json={"input_file_id": "f", "endpoint": "/v1/chat/completions"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "completion_window"
    asyncio.run(scenario())


@pytest.mark.parametrize("query,status", [("limit=100", 200), ("limit=1", 200), ("", 200), ("limit=101", 400),
                                          ("limit=", 400), ("limit=0", 400), ("limit=1_0", 400), ("limit=ten", 400)])
def test_list_limit_is_the_documented_1_to_100(api, query, status):
    async def scenario():
        client, _ = await api()
        for path in ("/v1/files", "/v1/batches"):
            response = await client._client.get(f"http://test{path}?{query}")
            assert response.status_code == status, (path, query, response.text)
            if status == 400:
                assert response.json()["error"]["param"] == "limit"
    asyncio.run(scenario())


@pytest.mark.parametrize("method,path,allowed", [
    ("TRACE", "/v1/files", "GET, POST"), ("POST", "/v1/files/file-x", "GET, DELETE"),
    ("DELETE", "/v1/files/file-x/content", "GET"), ("DELETE", "/v1/batches", "GET, POST"),
    ("POST", "/v1/batches/batch_x", "GET"), ("GET", "/v1/batches/batch_x/cancel", "POST"),
])
def test_wrong_methods_are_405_naming_the_right_ones(api, method, path, allowed):
    async def scenario():
        client, _ = await api()
        response = await client._client.request(method, f"http://test{path}")
        assert response.status_code == 405 and response.headers["allow"] == allowed
        assert (await client._client.get("http://test/v1/files/a/b/c")).status_code == 404
    asyncio.run(scenario())


def test_content_of_a_file_deleted_under_the_reader_is_a_404(api, tmp_path):
    """A concurrent DELETE removes the metadata and the bytes in two steps; a content read that falls
    between them found the metadata but no bytes (the fuzz test saw a 500 here)."""
    async def run():
        client, _ = await api()
        uploaded = await client.files.create(file=("in.jsonl", lines(2)), purpose="batch")
        (tmp_path / "files" / f"{uploaded.id}.jsonl").unlink()
        with pytest.raises(openai.NotFoundError):
            await client.files.content(uploaded.id)

    asyncio.run(run())


def test_a_file_a_batch_uses_cannot_be_deleted(api):
    """Issue #27: deleting the input of a batch that has not ended is a 409 (OpenAI's error JSON naming
    the batch), and the file and its batch stay whole; once the batch ended its files may go, as at
    OpenAI; a file no batch uses goes."""
    async def scenario():
        client, jobs = await api()
        used = await client.files.create(file=("in.jsonl", lines(3)), purpose="batch")
        spare = await client.files.create(file=("spare.jsonl", lines(1)), purpose="batch")
        batch = await client.batches.create(input_file_id=used.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        with pytest.raises(openai.ConflictError) as refused:  # while it runs (or waits to)
            await client.files.delete(used.id)
        error = refused.value.body
        assert error["code"] == "file_in_use" and error["param"] == "file_id" and batch.id in error["message"]
        assert error["type"] == "invalid_request_error"
        await asyncio.gather(*jobs.tasks)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert (await client.files.content(used.id)).content == lines(3)  # kept whole while it ran
        assert len((await client.files.content(done.output_file_id)).text.splitlines()) == 3
        for file_id in (used.id, done.output_file_id):  # ended: its files are the owner's to delete
            assert (await client.files.delete(file_id)).deleted
        assert (await client.files.delete(spare.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.delete(spare.id)
    asyncio.run(scenario())
