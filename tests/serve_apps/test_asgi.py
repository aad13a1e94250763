"""``call_asgi``: an ASGI app called in process, its body as chunks (the router's in-process engine path)."""

from __future__ import annotations

import asyncio

import pytest

from serve_apps.asgi import call_asgi


def app_sending(*bodies: bytes, pause: float | None = None, fail_after: bool = False):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for body in bodies:
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if pause is not None:
                await asyncio.sleep(pause)
        if fail_after:
            raise RuntimeError("engine died")
        await send({"type": "http.response.body", "body": b""})
    return app


async def chunks_of(app) -> list[bytes]:
    response = await call_asgi(app, "POST", "/v1/chat/completions", [("content-type", "application/json")], b"{}")
    assert response.status == 200 and ("content-type", "text/event-stream") in response.headers
    return [chunk async for chunk in response.body]


def test_events_already_waiting_are_joined_into_one_chunk():
    assert asyncio.run(chunks_of(app_sending(b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"))) == [b"data: 1\n\ndata: 2\n\ndata: 3\n\n"]


def test_events_apart_in_time_stay_apart():
    assert asyncio.run(chunks_of(app_sending(b"a", b"b", b"c", pause=0.01))) == [b"a", b"b", b"c"]


def test_an_app_failing_mid_body_delivers_what_it_sent_then_raises():
    received = []

    async def read() -> None:
        response = await call_asgi(app_sending(b"a", b"b", fail_after=True), "GET", "/")
        async for chunk in response.body:
            received.append(chunk)

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(read())
    assert b"".join(received) == b"ab"


def test_closing_the_body_early_cancels_the_app():
    asyncio.run(_closing_the_body_early_cancels_the_app())


async def _closing_the_body_early_cancels_the_app():
    cancelled = asyncio.Event()

    async def endless(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    response = await call_asgi(endless, "GET", "/")
    assert await response.body.__anext__() == b"x"
    await response.aclose()
    await asyncio.wait_for(cancelled.wait(), 2)
