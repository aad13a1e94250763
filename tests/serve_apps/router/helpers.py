"""Small HTTP helpers shared by the router tests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.serve_apps.router.fake_backend import plan


def expected_text(prompt: str, max_tokens: int) -> str:
    return "".join(plan(prompt, "", max_tokens)[0])


def chat_body(prompt: str = "hello", max_tokens: int = 8, model: str = "tiny-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **extra}


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def text(self) -> str:
        parts = []
        for event in self.events:
            for choice in event.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
        return "".join(parts)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "error" in e]


def stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 60,
           path: str = "/v1/chat/completions") -> StreamResult:
    with httpx.stream("POST", url + path, json={**body, "stream": True}, headers=headers, timeout=timeout) as response:
        result = StreamResult(response.status_code, response.headers)
        if response.status_code != 200:
            response.read()
            result.events.append(response.json())
            return result
        for line in response.iter_lines():
            if line.startswith(":"):
                result.comments.append(line)
            elif line.startswith("data: "):
                if line == "data: [DONE]":
                    result.done = True
                else:
                    result.events.append(json.loads(line[6:]))
    return result


def backends(url: str, key: str = "client-key-1") -> dict[str, dict[str, Any]]:
    """``/v1/backends`` by name (the key is ignored by routers without auth)."""
    response = httpx.get(url + "/v1/backends", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return {b["name"]: b for b in response.json()["data"]}


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.2, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")
