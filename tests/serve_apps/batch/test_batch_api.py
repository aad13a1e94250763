"""The OpenAI Files and Batch APIs on the router, through the ``openai`` SDK, against the session's real
vLLM engine: lifecycle, output format and order, partial failures, bad files, cancel, and a job whose
actor and router replica are SIGKILLed mid-run."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.serve_apps.batch.conftest import APP, sigkill

pytestmark = pytest.mark.engine
OUTPUT_KEYS = {"id", "custom_id", "response", "error"}


@pytest.fixture(scope="module")
def client(batch_router) -> openai.OpenAI:
    return openai.OpenAI(base_url=batch_router.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def line(custom_id: str, prompt: str, max_tokens: int = 8, model: str = MODEL, url: str = "/v1/chat/completions",
         **body) -> str:
    if url == "/v1/completions":
        payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, **body}
    else:
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": payload})


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    return client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch").id


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 240, seen: set[str] | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if seen is not None:
            seen.add(batch.status)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s: {batch.request_counts}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x]


def test_lifecycle_order_and_partial_failure(client, serve_stack):
    lines = [line(f"req-{i}", f"prompt number {i}", temperature=0) for i in range(24)]
    lines.insert(5, line("not-served", "hi", model="no-such-model"))
    input_id = upload(client, lines)
    meta = client.files.retrieve(input_id)
    assert meta.purpose == "batch" and meta.bytes > 0 and meta.filename == "in.jsonl"

    created = client.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"run": "lifecycle"})
    assert created.status == "validating" and created.object == "batch" and created.metadata == {"run": "lifecycle"}
    assert created.expires_at - created.created_at == 24 * 3600
    seen: set[str] = set()
    batch = wait_done(client, created.id, seen=seen)
    assert batch.status == "completed", batch.errors
    assert seen <= {"validating", "in_progress", "finalizing", "completed"}
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.request_counts.total == 25 and batch.request_counts.completed == 24 and batch.request_counts.failed == 1

    output = jsonl(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(24)]
    for item in output:
        assert set(item) == OUTPUT_KEYS and item["error"] is None and item["id"].startswith("batch_req_")
        assert item["response"]["status_code"] == 200 and item["response"]["request_id"]
        assert item["response"]["body"]["object"] == "chat.completion"
        assert item["response"]["body"]["_backend"] == "replica"
    # the batch's answer is the engine's own answer (greedy)
    direct = httpx.post(serve_stack.base_url + "/v1/chat/completions", timeout=60, json=json.loads(lines[0])["body"]).json()
    assert output[0]["response"]["body"]["choices"][0]["message"] == direct["choices"][0]["message"]

    errors = jsonl(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["not-served"]
    assert errors[0]["response"]["status_code"] == 404 and errors[0]["error"] is None
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

    listed = client.batches.list(limit=1)
    assert listed.data[0].id == created.id  # newest first
    assert client.files.delete(input_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(input_id)


def test_completions_endpoint(client):
    lines = [line(f"c{i}", "def main():", url="/v1/completions") for i in range(3)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions", completion_window="24h")
    batch = wait_done(client, batch.id)
    output = jsonl(client, batch.output_file_id)
    assert [o["response"]["body"]["object"] for o in output] == ["text_completion"] * 3


def test_bad_file_fails_with_line_numbers(client):
    lines = [line("a", "x"), "{oops", line("a", "y"), line("b", "z", url="/v1/completions"),
             json.dumps({"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
             json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}})]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_done(client, batch.id)
    assert batch.status == "failed" and batch.failed_at
    assert {(e.line, e.code) for e in batch.errors.data} == {
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_endpoint"), (5, "invalid_method"),
        (6, "missing_required_parameter")}
    assert batch.output_file_id is None


def test_bad_requests_get_openai_errors(client, batch_router):
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert err.value.body["param"] == "purpose"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    file_id = upload(client, [line("a", "x")])
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-../../etc")
    raw = httpx.post(batch_router.url + "/v1/batches", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    raw = httpx.post(batch_router.url + "/v1/files", content=b"plain", headers={"content-type": "text/plain"}, timeout=10)
    assert raw.status_code == 400 and "error" in raw.json()


def test_cancel_keeps_finished_results(client):
    lines = [line(f"k{i}", f"cancel me {i}", max_tokens=48, ignore_eos=True) for i in range(300)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 10:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    batch = wait_done(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    output = jsonl(client, batch.output_file_id)
    assert 10 <= len(output) < 300
    assert len({o["custom_id"] for o in output}) == len(output) == batch.request_counts.completed
    with pytest.raises(openai.APIStatusError):
        client.batches.cancel(batch.id)


def test_job_and_router_killed_mid_run_resume_exactly_once(client):
    """SIGKILL the job host actor twice and the router replica once while the batch runs: every
    custom_id is in the output exactly once."""
    total = 400
    lines = [line(f"r{i}", f"resume {i}", max_tokens=32, ignore_eos=True) for i in range(total)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/chat/completions",
                                  completion_window="24h")

    def progressed_past(count: int) -> int:
        deadline = time.monotonic() + 180
        while True:
            current = client.batches.retrieve(batch.id)
            if current.request_counts.completed >= count or current.status != "in_progress" and current.status != "validating":
                return current.request_counts.completed
            assert time.monotonic() < deadline, "the job stopped making progress"
            time.sleep(0.1)

    assert progressed_past(40) < total
    sigkill("ray::BatchJobs")
    assert progressed_past(140) < total, "too fast to kill mid-run"
    sigkill(f"ray::ServeReplica:{APP}:MultiBackendRouter")
    assert progressed_past(200) < total
    sigkill("ray::BatchJobs")
    batch = wait_done(client, batch.id, timeout=300)
    assert batch.status == "completed"
    output = jsonl(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(total)]
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert batch.request_counts.completed == total and batch.request_counts.failed == 0
