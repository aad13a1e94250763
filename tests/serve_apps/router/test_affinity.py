"""The prefix index behind ``routing: prefix_affinity`` (pure Python, no processes): prompt rendering,
block keys, longest-chain choice, spill-over, endpoints leaving and joining, the memory bound."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serve_apps.checks import parse_router_args
from serve_apps.router.affinity import PrefixAffinity, PrefixIndex, prefix_keys, render_prompt
from serve_apps.router.backends.base import BackendRequest
from serve_apps.router.backends.http import HTTPClient
from serve_apps.router.backends.serve import ServeBackend, _Endpoint
from serve_apps.router.config import BackendConfig
from serve_apps.validation import format_validation_error

BLOCK = 16
ENDPOINTS = [f"http://127.0.0.1:{port}" for port in (40001, 40002, 40003, 40004)]
IDLE = dict.fromkeys(ENDPOINTS[:3], 0)

texts = st.text(alphabet=st.characters(codec="utf-8"), min_size=BLOCK, max_size=12 * BLOCK)


def chat(*contents: str) -> dict:
    roles = ["system", "user", "assistant"]
    return {"messages": [{"role": roles[min(i, 1) if i < 2 else 1 + i % 2], "content": c} for i, c in enumerate(contents)]}


def test_render_chat_and_completion_prompts():
    assert render_prompt(chat("be brief", "hi")) == "\x1esystem\x1fbe brief\x1euser\x1fhi"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}]}
    assert render_prompt(parts) == "\x1euser\x1fab"
    assert render_prompt({"prompt": "once upon"}) == "once upon"
    assert render_prompt({"prompt": ["first", "second"]}) == "first"
    assert render_prompt({"prompt": [1, 2, 3]}) == "1,2,3"
    # odd shapes render as nothing rather than failing the request
    for payload in (None, {}, {"messages": ["x", 3, None]}, {"prompt": 7}, {"prompt": []}, {"prompt": [None]}):
        assert render_prompt(payload) in ("", "\x1eNone\x1f")
    assert render_prompt({"messages": [{"content": "x"}]}) == "\x1eNone\x1fx"


def test_role_is_part_of_the_prefix():
    assert prefix_keys(render_prompt(chat("a" * 64)), BLOCK) != prefix_keys(render_prompt({"messages": [{"role": "user", "content": "a" * 64}]}), BLOCK)


@given(texts, texts)
def test_keys_are_a_chain_of_whole_blocks(a, b):
    keys = prefix_keys(a + b, BLOCK)
    assert len(keys) == len((a + b).encode("utf-8", "surrogatepass")) // BLOCK
    assert prefix_keys(a, BLOCK) == keys[: len(prefix_keys(a, BLOCK))]
    assert len(set(keys)) == len(keys)  # depth is part of the key


def test_changing_an_early_block_changes_every_later_key():
    base = prefix_keys("x" * 100, BLOCK)
    changed = prefix_keys("y" + "x" * 99, BLOCK)
    assert not set(base) & set(changed)


@settings(max_examples=60)
@given(texts, st.lists(st.text(min_size=0, max_size=3 * BLOCK), min_size=1, max_size=6))
def test_same_prefix_same_endpoint(system, turns):
    """A conversation that grows turn by turn stays on its endpoint while load is even."""
    affinity = PrefixAffinity(block_size=BLOCK, spill_margin=2)
    history: list[str] = [system]
    first = affinity.choose(affinity.keys(chat(*history)), IDLE).endpoint
    for turn in turns:
        history.append(turn)
        choice = affinity.choose(affinity.keys(chat(*history)), IDLE)
        assert choice.endpoint == first and choice.outcome == "hit" and choice.matched_blocks >= 1


def test_longest_chain_wins():
    affinity = PrefixAffinity(block_size=BLOCK)
    shared = "s" * (4 * BLOCK)
    short = affinity.keys({"prompt": shared})
    deep = affinity.keys({"prompt": shared + "d" * (4 * BLOCK)})
    affinity.index.record(short, ENDPOINTS[0])
    affinity.index.record(deep, ENDPOINTS[1])
    choice = affinity.choose(affinity.keys({"prompt": shared + "d" * (3 * BLOCK) + "other"}), IDLE)
    assert (choice.endpoint, choice.outcome, choice.matched_blocks) == (ENDPOINTS[1], "hit", 7)
    # a prompt sharing only the common part goes to the less loaded of the two holders
    choice = affinity.choose(affinity.keys({"prompt": shared + "e" * BLOCK}), {**IDLE, ENDPOINTS[1]: 1})
    assert (choice.endpoint, choice.matched_blocks) == (ENDPOINTS[0], 4)


def test_spill_over_past_the_margin_and_the_prefix_lives_on_both():
    affinity = PrefixAffinity(block_size=BLOCK, spill_margin=2)
    keys = affinity.keys({"prompt": "p" * (5 * BLOCK)})
    home = affinity.choose(keys, IDLE).endpoint
    assert affinity.choose(keys, {**IDLE, home: 2}).endpoint == home  # within the margin: stay
    spilled = affinity.choose(keys, {**IDLE, home: 3})
    assert spilled.outcome == "spill" and spilled.endpoint != home and spilled.matched_blocks == 5
    # now both hold it: the less loaded of the two takes it as a hit, the third endpoint is not a holder
    load = {e: (1 if e not in (home, spilled.endpoint) else 0) for e in IDLE} | {home: 1}
    again = affinity.choose(keys, load)
    assert again.outcome == "hit" and again.endpoint == spilled.endpoint
    assert affinity.outcomes == {"hit": 2, "miss": 1, "spill": 1}
    assert affinity.endpoint_stats(spilled.endpoint)["spills_in"] == 1


def test_a_prefix_every_endpoint_holds_is_no_reason_to_queue():
    """A long prefix cached on both endpoints (a shared system prompt) plus a little of the
    conversation's own on one: a busier home is left for the idle endpoint; enough of its own, or an
    even load, and the home keeps it."""
    affinity = PrefixAffinity(block_size=BLOCK, spill_margin=4, min_gain=0.1)
    system = "s" * (20 * BLOCK)
    own = system + "o" * BLOCK  # one block of its own: 1/21 < 0.1
    affinity.index.record(affinity.keys({"prompt": system}), ENDPOINTS[0])
    affinity.index.record(affinity.keys({"prompt": own}), ENDPOINTS[1])
    even = affinity.choose(affinity.keys({"prompt": own + "next turn"}), {ENDPOINTS[0]: 1, ENDPOINTS[1]: 1})
    assert (even.endpoint, even.outcome, even.matched_blocks) == (ENDPOINTS[1], "hit", 21)
    two = {ENDPOINTS[0]: 0, ENDPOINTS[1]: 1}
    choice = affinity.choose(affinity.keys({"prompt": own + "next turn"}), two)
    assert (choice.endpoint, choice.outcome, choice.matched_blocks) == (ENDPOINTS[0], "spill", 21)
    long_own = system + "l" * (4 * BLOCK)  # 4 of 24 blocks its own: worth one more in the queue
    affinity.index.record(affinity.keys({"prompt": long_own}), ENDPOINTS[1])
    kept = affinity.choose(affinity.keys({"prompt": long_own + "next turn"}), two)
    assert (kept.endpoint, kept.outcome) == (ENDPOINTS[1], "hit")
    with pytest.raises(ValueError):
        PrefixAffinity(min_gain=1.5)


def test_short_prompts_follow_load():
    affinity = PrefixAffinity(block_size=BLOCK)
    choice = affinity.choose(affinity.keys({"prompt": "hi"}), {ENDPOINTS[0]: 3, ENDPOINTS[1]: 0})
    assert (choice.endpoint, choice.outcome) == (ENDPOINTS[1], "miss")
    with pytest.raises(ValueError):
        affinity.choose([], {})


@settings(max_examples=40)
@given(st.lists(texts, min_size=3, max_size=30, unique=True), st.sampled_from(ENDPOINTS[:3]))
def test_removal_moves_only_the_removed_endpoints_prefixes(prompts, leaving):
    affinity = PrefixAffinity(block_size=BLOCK)
    before = {p: affinity.choose(affinity.keys({"prompt": p}), IDLE).endpoint for p in prompts}
    affinity.forget(leaving)
    assert affinity.index.blocks.get(leaving) is None
    rest = {e: 0 for e in IDLE if e != leaving}
    for prompt, endpoint in before.items():
        after = affinity.choose(affinity.keys({"prompt": prompt}), rest).endpoint
        if endpoint != leaving:
            assert after == endpoint
        else:
            assert after in rest


@settings(max_examples=40)
@given(st.lists(texts, min_size=3, max_size=30, unique=True))
def test_a_joining_endpoint_takes_no_known_prefix(prompts):
    affinity = PrefixAffinity(block_size=BLOCK)
    before = {p: affinity.choose(affinity.keys({"prompt": p}), IDLE).endpoint for p in prompts}
    grown = {**IDLE, ENDPOINTS[3]: 0}
    assert all(affinity.choose(affinity.keys({"prompt": p}), grown).endpoint == e for p, e in before.items())


def test_new_prefixes_spread_by_rendezvous():
    """Idle endpoints and prompts with distinct first blocks: every endpoint gets a fair share, and
    another router replica (a fresh index) places each prompt the same way."""
    one, two = PrefixAffinity(block_size=BLOCK), PrefixAffinity(block_size=BLOCK)
    prompts = [f"{i:04d}-conversation".ljust(2 * BLOCK, ".") for i in range(600)]
    placed = [one.choose(one.keys({"prompt": p}), IDLE).endpoint for p in prompts]
    assert placed == [two.choose(two.keys({"prompt": p}), IDLE).endpoint for p in prompts]
    shares = [placed.count(e) / len(placed) for e in IDLE]
    assert all(0.25 < share < 0.42 for share in shares), shares


@settings(max_examples=40)
@given(st.integers(1, 50), st.lists(st.tuples(texts, st.sampled_from(ENDPOINTS)), max_size=40))
def test_memory_bound_and_block_counts(capacity, records):
    index = PrefixIndex(capacity)
    for text, endpoint in records:
        index.record(prefix_keys(text, BLOCK), endpoint)
        assert len(index) <= capacity
    for endpoint, count in index.blocks.items():
        bit = 1 << index.slot(endpoint)
        assert count == sum(1 for holders in index._entries.values() if holders & bit)
    if records:
        gone = records[0][1]
        index.forget(gone)
        assert all(holders for holders in index._entries.values())  # no entry left naming nobody
        assert gone not in index.blocks


def test_config_routing_is_checked_at_load():
    ok = BackendConfig(name="e", kind="serve", engine="x", routing="prefix_affinity", affinity={"spill_margin": 0})
    assert ok.affinity.spill_margin == 0 and ok.affinity.block_size == 128
    assert BackendConfig(name="e", kind="serve", engine="x").routing == "least_outstanding"
    bad = [
        ({"kind": "openai", "url": "http://h", "routing": "prefix_affinity"}, "routing"),
        ({"kind": "serve", "engine": "x", "routing": "prefix_affinity", "transport": "handle"}, "transport auto"),
        ({"kind": "serve", "engine": "x", "routing": "round_robin"}, "routing"),
        ({"kind": "serve", "engine": "x", "affinity": {"block_size": 4}}, "affinity.block_size"),
        ({"kind": "serve", "engine": "x", "affinity": {"spill_margin": -1}}, "affinity.spill_margin"),
        ({"kind": "serve", "engine": "x", "affinity": {"blocksize": 64}}, "affinity.blocksize"),
    ]
    for fields, says in bad:
        with pytest.raises(ValidationError) as info:
            BackendConfig(name="e", **fields)
        assert says in format_validation_error(info.value)


def test_affinity_with_colocated_engines_is_refused():
    args = {"engines": [{"name": "tiny-chat", "model": "builtin:tiny-chat"}], "router": {"colocate": True},
            "backends": [{"name": "e", "kind": "serve", "engine": "tiny-chat", "routing": "prefix_affinity"}]}
    with pytest.raises(ValueError, match="backends.0: routing prefix_affinity chooses among engine replicas"):
        parse_router_args(args)
    args["backends"][0]["routing"] = "least_outstanding"
    assert parse_router_args(args).router.colocate


class _UnusedHandle:
    """Stands in for the DeploymentHandle, which these requests never reach (endpoints are known)."""

    def options(self, **_: Any) -> _UnusedHandle:
        return self


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(re.search(rb"content-length: (\d+)", head, re.I).group(1)))
    body = b'{"ok": true}'
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def _close_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # what a replica whose process is exiting does to a connection it had accepted


def test_serve_backend_moves_a_request_off_a_dying_replica():
    """Real sockets, no Ray: the preferred replica first closes connections unanswered (still exiting),
    then refuses them (gone); both times the request is answered by the other replica, and only the
    refusal drops the endpoint and its prefixes."""

    async def scenario() -> None:
        dying = await asyncio.start_server(_close_unanswered, "127.0.0.1", 0)
        alive = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
        urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (dying, alive)]
        config = BackendConfig(name="e", kind="serve", engine="x", routing="prefix_affinity",
                               affinity={"block_size": BLOCK}, timeouts={"connect": 2, "first_byte": 5, "idle": 5})
        backend = ServeBackend(config, _UnusedHandle())
        backend._endpoints = {u: _Endpoint(u, HTTPClient(config.model_copy(update={"url": u})), {}) for u in urls}
        affinity = backend._affinity
        try:
            for attempt, prompt in enumerate(("a conversation that lives on the dying replica", "another one, also there")):
                payload = {"model": "x", "prompt": prompt}
                affinity.index.record(affinity.keys(payload), urls[0])
                if attempt == 1:
                    dying.close()
                    await dying.wait_closed()
                response = await backend.send(BackendRequest("POST", "/v1/completions", json.dumps(payload).encode(), payload))
                assert response.status == 200 and await response.aread() == b'{"ok": true}'
                assert backend._endpoints[urls[1]].outstanding == 0
            assert list(backend._endpoints) == [urls[1]] and urls[0] not in affinity.index.blocks
            assert affinity.index.blocks[urls[1]] > 0  # the moved prefixes now live on the survivor
        finally:
            await backend.aclose()
            alive.close()

    asyncio.run(scenario())
