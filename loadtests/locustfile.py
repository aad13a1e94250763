"""Locust load for any OpenAI-compatible front door (engine app or router).

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 32 -r 8 -t 60s

Environment: LOCUST_MODEL (default tiny-chat), LOCUST_MAX_TOKENS (default 32), LOCUST_STREAM
(1 = streaming requests, default 1), OPENAI_API_KEY (sent as Bearer if set). Streams are read to
the end; time to first byte is reported as a separate "TTFT" entry.
"""

from __future__ import annotations

import json
import os
import time

from locust import HttpUser, between, events, task

MODEL = os.environ.get("LOCUST_MODEL", "tiny-chat")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "32"))
STREAM = os.environ.get("LOCUST_STREAM", "1") == "1"


class ChatUser(HttpUser):
    wait_time = between(0, 0.1)

    def on_start(self) -> None:
        key = os.environ.get("OPENAI_API_KEY")
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}

    @task
    def chat(self) -> None:
        body = {"model": MODEL, "max_tokens": MAX_TOKENS, "stream": STREAM,
                "messages": [{"role": "user", "content": "Write a short function."}]}
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              stream=STREAM, catch_response=True, name="chat") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            if STREAM:
                first = True
                for _ in response.iter_content(chunk_size=None):
                    if first:
                        events.request.fire(request_type="SSE", name="TTFT", response_length=0, exception=None,
                                            response_time=1000 * (time.perf_counter() - started), context={})
                        first = False
            response.success()
