"""Locust suite for any OpenAI-compatible front door (the router, an engine app, a remote deployment).

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 8 -t 2m \
        --mix chat:3,stream:3,pinned:1,batch:1,openai-batch:0 --backend engine --rate-per-user 1

Users (their share of the users set by ``--mix``, a weight per kind; a kind left out or 0 is not run):

- ``chat``: non-streaming chat completions (locust entry ``chat``).
- ``stream``: streaming chat completions read to ``[DONE]`` (``chat (stream)``); the time to the first
  byte of the body is its own entry, ``TTFT``.
- ``pinned``: chat with the router's ``backend`` field set to ``--backend``; an answer from another
  backend (``x-backend``) is a failure (``chat (pinned)``).
- ``batch``: ``POST /v1/batch`` with ``--batch-prompts`` prompts (``/v1/batch``).
- ``openai-batch``: an OpenAI batch through ``/v1/files`` + ``/v1/batches``, polled to the end and its
  output read (``openai batch``, from upload to output).

Every option also reads an environment variable (``locust --help`` shows them): LOCUST_MODEL,
LOCUST_MAX_TOKENS, LOCUST_MIX, LOCUST_BACKEND, LOCUST_RATE_PER_USER, LOCUST_BATCH_PROMPTS; the key comes
from ``--api-key`` or OPENAI_API_KEY and is sent as a Bearer token (never logged).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from locust import HttpUser, between, constant_throughput, events, task

KINDS = ("chat", "stream", "pinned", "batch", "openai-batch")
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def parse_mix(text: str) -> dict[str, int]:
    """``chat:3,stream:1`` -> {"chat": 3, "stream": 1}; unknown kinds and bad weights raise ValueError."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, weight = part.partition(":")
        if kind not in KINDS:
            raise ValueError(f"--mix: unknown user kind {kind!r} (known: {', '.join(KINDS)})")
        try:
            mix[kind] = int(weight) if sep else 1
        except ValueError:
            raise ValueError(f"--mix: weight of {kind!r} is not an integer: {weight!r}") from None
        if mix[kind] < 0:
            raise ValueError(f"--mix: weight of {kind!r} is negative")
    if not any(mix.values()):
        raise ValueError("--mix: no user kind has a weight above 0")
    return mix


def _mix_option(text: str) -> dict[str, int]:
    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--mix: ")) from None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", env_var="LOCUST_MODEL", default="tiny-chat", help="model name to request")
    parser.add_argument("--max-tokens", env_var="LOCUST_MAX_TOKENS", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--mix", env_var="LOCUST_MIX", default="chat:1,stream:1", type=_mix_option,
                        help=f"user kinds and weights, e.g. chat:3,stream:1 (kinds: {', '.join(KINDS)})")
    parser.add_argument("--backend", env_var="LOCUST_BACKEND", default="",
                        help="backend name the pinned users ask for (the router's `backend` field)")
    parser.add_argument("--rate-per-user", env_var="LOCUST_RATE_PER_USER", type=float, default=0.0,
                        help="requests per second per user (0: back to back with 0-100 ms pauses)")
    parser.add_argument("--batch-prompts", env_var="LOCUST_BATCH_PROMPTS", type=int, default=8,
                        help="prompts per /v1/batch call and lines per OpenAI batch")
    parser.add_argument("--api-key", env_var="OPENAI_API_KEY", default="", is_secret=True,
                        help="sent as `authorization: Bearer ...`")


@events.init.add_listener
def _apply_mix(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # a library user building an Environment by hand keeps the class weights
        return
    mix = options.mix if isinstance(options.mix, dict) else parse_mix(options.mix)
    if mix.get("pinned") and not options.backend:
        # SystemExit, not an exception: locust logs a listener's exceptions and runs on
        raise SystemExit("locustfile: --mix asks for pinned users: name their backend with --backend")
    for user_class in environment.user_classes:
        user_class.weight = mix.get(getattr(user_class, "kind", ""), 0)
    environment.user_classes[:] = [c for c in environment.user_classes if c.weight > 0]


class _OpenAIUser(HttpUser):
    abstract = True
    kind = ""

    def wait_time(self) -> float:
        rate = self.environment.parsed_options.rate_per_user
        return constant_throughput(rate)(self) if rate > 0 else between(0, 0.1)(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model, self.max_tokens = options.model, options.max_tokens
        self.headers = {"content-type": "application/json"}
        if options.api_key:
            self.headers["authorization"] = f"Bearer {options.api_key}"

    def chat_body(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": "Write a short function."}], **extra}

    def post_json(self, path: str, body: dict[str, Any], name: str, check=None) -> None:
        with self.client.post(path, data=json.dumps(body), headers=self.headers, catch_response=True,
                              name=name) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            problem = check(response) if check else None
            if problem:
                response.failure(problem)


class ChatUser(_OpenAIUser):
    kind = "chat"

    @task
    def chat(self) -> None:
        self.post_json("/v1/chat/completions", self.chat_body(), "chat",
                       lambda r: None if r.json().get("choices") else "no choices in the answer")


class StreamUser(_OpenAIUser):
    kind = "stream"

    @task
    def stream(self) -> None:
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", data=json.dumps(self.chat_body(stream=True)),
                              headers=self.headers, stream=True, catch_response=True, name="chat (stream)") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            tail = b""
            for chunk in response.iter_content(chunk_size=None):
                if not tail:
                    events.request.fire(request_type="SSE", name="TTFT", response_length=0, exception=None,
                                        response_time=1000 * (time.perf_counter() - started), context={})
                tail = (tail + chunk)[-512:]
            if not tail.rstrip().endswith(b"data: [DONE]"):
                response.failure(f"stream ended without [DONE]: {tail[-120:]!r}")


class PinnedUser(_OpenAIUser):
    kind = "pinned"

    @task
    def pinned(self) -> None:
        backend = self.environment.parsed_options.backend

        def answered_by_it(response) -> str | None:
            got = response.headers.get("x-backend")
            return None if got in (None, backend) else f"asked for backend {backend!r}, answered by {got!r}"

        self.post_json("/v1/chat/completions", self.chat_body(backend=backend), "chat (pinned)", answered_by_it)


class BatchUser(_OpenAIUser):
    kind = "batch"

    @task
    def batch(self) -> None:
        count = self.environment.parsed_options.batch_prompts
        body = {"model": self.model, "prompts": [f"prompt {i}" for i in range(count)],
                "params": {"max_tokens": self.max_tokens}}

        def all_answered(response) -> str | None:
            results = response.json().get("results", [])
            failed = sum(1 for r in results if "error" in r)
            return None if len(results) == count and not failed else f"{failed} of {len(results)}/{count} items failed"

        self.post_json("/v1/batch", body, "/v1/batch", all_answered)


class OpenAIBatchUser(_OpenAIUser):
    kind = "openai-batch"
    poll_s, limit_s = 0.5, 600.0

    @task
    def openai_batch(self) -> None:
        count = self.environment.parsed_options.batch_prompts
        lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": self.chat_body()}) + "\n" for i in range(count))
        auth = {k: v for k, v in self.headers.items() if k == "authorization"}
        started = time.perf_counter()
        try:
            error, size = self._run_batch(lines, auth, count)
        except (KeyError, ValueError) as exc:  # an answer that is not the Batch API's JSON
            error, size = f"unexpected answer: {type(exc).__name__}: {exc}", 0
        events.request.fire(request_type="BATCH", name="openai batch", response_length=size, context={},
                            response_time=1000 * (time.perf_counter() - started),
                            exception=RuntimeError(error) if error else None)

    def _run_batch(self, lines: str, auth: dict[str, str], count: int) -> tuple[str | None, int]:
        # each step is also an entry of its own ("openai batch: upload", ...), next to the whole batch
        upload = self.client.post("/v1/files", files={"file": ("locust.jsonl", lines.encode())},
                                  data={"purpose": "batch"}, headers=auth, name="openai batch: upload")
        if upload.status_code != 200:
            return f"upload: HTTP {upload.status_code}", 0
        created = self.client.post("/v1/batches", headers=self.headers, name="openai batch: create", data=json.dumps(
            {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        if created.status_code != 200:
            return f"create: HTTP {created.status_code}", 0
        batch, deadline = created.json(), time.monotonic() + self.limit_s
        while batch["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            batch = self.client.get(f"/v1/batches/{batch['id']}", headers=auth, name="openai batch: poll").json()
        if batch["status"] != "completed" or not batch.get("output_file_id"):
            return f"batch ended {batch['status']}", 0
        output = self.client.get(f"/v1/files/{batch['output_file_id']}/content", headers=auth,
                                 name="openai batch: output")
        answered = sum(1 for line in output.text.splitlines() if line.strip())
        return (None if answered == count else f"{answered} of {count} lines answered"), len(output.content)
