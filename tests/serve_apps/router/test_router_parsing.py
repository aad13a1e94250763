"""Whatever a client sends, the router answers a 4xx OpenAI-style error or a real answer, never a 5xx:
property tests over the router's own parsing (JSON depth, unicode, numbers, huge strings, wrong types),
through its ASGI app in process against scripted backends (milliseconds per example)."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_apps.asgi import call_asgi
from serve_apps.router.asgi import RouterASGI
from tests.serve_apps.router.scripted import Step
from tests.serve_apps.router.test_router_scripted import CHAT, make_router

COMPLETIONS = "/v1/completions"
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=30)
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def post(body: bytes, path: str = CHAT, headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    """One request through a fresh router (healthy scripted backends that always answer 200)."""
    router, _ = make_router([Step()] * 2, [Step()] * 2)
    app = RouterASGI(router)

    async def run() -> tuple[int, bytes]:
        response = await call_asgi(app, "POST", path, [("content-type", "application/json"), *headers], body)
        return response.status, await response.read()

    return asyncio.run(run())


def assert_client_error_or_answer(status: int, raw: bytes) -> None:
    assert status < 500, raw[:300]
    if status >= 400:
        error = json.loads(raw)["error"]
        assert isinstance(error["message"], str) and error["type"]


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_bodies_are_a_400(depth: int, opener: str):
    closer = "]" if opener == "[" else "}"
    body = ('{"model":"m","messages":' + opener * depth + "1" + closer * depth + "}").encode()
    status, raw = post(body)
    assert status == 400, raw[:200]
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


@EXAMPLES
@given(st.binary(max_size=2048))
def test_any_bytes_get_an_answer_below_500(body: bytes):
    assert_client_error_or_answer(*post(body))


@EXAMPLES
@given(JSON_VALUES)
def test_any_json_document_gets_an_answer_below_500(document):
    assert_client_error_or_answer(*post(json.dumps(document).encode()))


@EXAMPLES
@given(st.dictionaries(st.sampled_from(["model", "messages", "prompt", "stream", "backend", "max_tokens", "n",
                                        "stream_options", "continue_final_message", "tools", "echo"]),
                       JSON_VALUES, max_size=6),
       st.sampled_from([CHAT, COMPLETIONS]))
def test_any_types_in_known_fields_get_an_answer_below_500(fields: dict, path: str):
    assert_client_error_or_answer(*post(json.dumps(fields).encode(), path))


@EXAMPLES
@given(st.text(max_size=64), st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]))
def test_unicode_in_any_encoding_gets_an_answer_below_500(text: str, encoding: str):
    body = json.dumps({"model": text, "messages": [{"role": "user", "content": text}]}, ensure_ascii=False)
    try:
        raw = body.encode(encoding)
    except UnicodeEncodeError:
        raw = body.encode("utf-8", "surrogatepass")
    assert_client_error_or_answer(*post(raw))


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", "1" * 5000, "0." + "0" * 5000 + "1"])
def test_extreme_numbers_get_an_answer_below_500(number: str):
    body = ('{"model":"m","max_tokens":' + number + ',"messages":[{"role":"user","content":"hi"}]}').encode()
    assert_client_error_or_answer(*post(body))


def test_a_huge_string_is_passed_on_not_choked_on():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()
    router, _ = make_router([Step()])
    router.config.max_request_bytes = 10_000_000
    app = RouterASGI(router)

    async def run() -> tuple[int, bytes]:
        response = await call_asgi(app, "POST", CHAT, [("content-type", "application/json")], body)
        return response.status, await response.read()

    status, raw = asyncio.run(run())
    assert status == 200 and json.loads(raw)["_backend"] == "b0"


def test_a_backend_header_that_is_not_utf8_is_a_client_error():
    status, raw = post(json.dumps({"model": "m", "messages": []}).encode(), headers=(("x-backend", "\xff\xfe"),))
    assert_client_error_or_answer(status, raw)


@pytest.mark.parametrize("field,value", [("structured_outputs", [None, None]), ("response_format", "json"),
                                         ("stream_options", [1]), ("messages", {"role": "user"}), ("tools", {})])
def test_a_container_field_of_the_wrong_type_is_the_clients_400(field: str, value):
    """vLLM answers 500 to some of these (``structured_outputs`` as a list); the router says 400 first."""
    status, raw = post(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}).encode())
    assert status == 400 and json.loads(raw)["error"]["message"] == f"`{field}` must be " + (
        "an array" if field in ("messages", "tools") else "an object")
