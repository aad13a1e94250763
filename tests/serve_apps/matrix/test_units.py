"""The bot's pure parts, without a homeserver: config validation, allow-lists, rate limits, the
persistent store, reply splitting and edit throttling, and the SSE reading of router answers."""

from __future__ import annotations

import asyncio
import stat

import pytest
from pydantic import ValidationError

from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.inference import Generation, InferenceError
from serve_apps.matrix.policy import RateLimiter
from serve_apps.matrix.replies import DONE_KEY, ReplyStream, split_text, txn_id
from serve_apps.matrix.store import BotStore
from serve_apps.openai_format import error_event, sse_event
from serve_apps.router.config import RouterAppArgs
from serve_apps.validation import format_validation_error

BASE = {"homeserver": "http://127.0.0.1:8008/", "user_id": "@bot:example.org",
        "access_token": {"env": "BOT_TOKEN"}, "store_path": "/tmp/bot"}


def config(**extra) -> MatrixConfig:
    return MatrixConfig.model_validate({**BASE, **extra})


# ---------------------------------------------------------------- config


def test_config_defaults_are_closed():
    parsed = config()
    assert parsed.homeserver == "http://127.0.0.1:8008"
    assert not parsed.allow.user_allowed("@alice:example.org")  # nobody until configured


@pytest.mark.parametrize("extra, where", [
    ({"access_token": None}, "exactly one of access_token or password"),
    ({"password": {"env": "PW"}}, "exactly one of access_token or password"),
    ({"access_token": "syt_plaintext"}, "access_token"),  # a literal secret is refused
    ({"allow": {"users": ["alice"]}}, "allow.users"),
    ({"allow": {"rooms": ["#alias:example.org"]}}, "allow.rooms"),
    ({"streaming": {"edit_interval": 0.05}}, "streaming.edit_interval"),
    ({"max_tokens": 5000}, "max_tokens must not exceed"),
    ({"homeserver": "matrix.org"}, "homeserver"),
    ({"sync": {"timeout": 5}}, "sync.timeout"),
])
def test_config_errors_name_the_key(extra, where):
    with pytest.raises(ValidationError) as info:
        MatrixConfig.model_validate({**BASE, **extra})
    assert where in format_validation_error(info.value)


def test_router_args_take_a_matrix_section_and_keep_secrets_out():
    args = RouterAppArgs.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}],
                                         "matrix": {**BASE, "password": {"file": "/run/secrets/pw"}, "access_token": None}})
    assert args.matrix is not None and args.matrix.password is not None
    assert "/run/secrets/pw" in repr(args.matrix)  # a reference, never a value
    with pytest.raises(ValidationError) as info:
        RouterAppArgs.model_validate({"backends": [{"name": "a", "kind": "openai", "url": "http://x"}],
                                      "matrix": {**BASE, "allow": {"user": []}}})
    assert "matrix.allow.user" in format_validation_error(info.value)


def test_allow_lists_match_users_servers_and_rooms():
    allow = config(allow={"users": ["@alice:example.org", "*:corp.example"], "rooms": ["!ops:example.org"]}).allow
    assert allow.user_allowed("@alice:example.org")
    assert allow.user_allowed("@anyone:corp.example")
    assert not allow.user_allowed("@alice:evil.example")
    assert not allow.user_allowed("@anyone:corp.example.evil")
    assert allow.room_allowed("!ops:example.org") and not allow.room_allowed("!other:example.org")
    assert config(allow={"users": ["*:x.org"]}).allow.room_allowed("!any:x.org")  # no room list: any room


# ---------------------------------------------------------------- rate limit


def test_rate_limit_is_per_user_and_slides():
    now = [0.0]
    limiter = RateLimiter(2, 10.0, clock=lambda: now[0])
    assert limiter.check("@a:x") == 0 and limiter.check("@a:x") == 0
    assert limiter.check("@a:x") == pytest.approx(10.0)
    assert limiter.check("@b:x") == 0  # someone else is not slowed down
    assert limiter.should_warn("@a:x") and not limiter.should_warn("@a:x")  # one warning per window
    now[0] = 10.0
    assert limiter.check("@a:x") == 0


# ---------------------------------------------------------------- store


def test_store_persists_token_answers_pending_threads_and_session(tmp_path):
    store = BotStore(tmp_path / "s")
    assert store.sync_token is None
    store.sync_token = "s72_1"
    store.add_pending("$e1", {"room_id": "!r:x", "sender": "@a:x", "thread_root": "$e1", "body": "!infer hi"})
    store.add_pending("$e2", {"room_id": "!r:x", "sender": "@a:x", "thread_root": "$e2", "body": "!infer yo"})
    store.mark_answered("$e1")
    store.add_turn("$root", "q1", "a1", keep_chars=100)
    store.add_turn("$root", "q2" * 30, "a2" * 30, keep_chars=100)  # over budget: the oldest turn goes
    store.save_session("@bot:x", "DEV", "secret-token")
    assert BotStore(tmp_path / "s").sync_token is None  # changes stay in memory until saved
    asyncio.run(store.save_in_thread())
    again = BotStore(tmp_path / "s")
    assert again.sync_token == "s72_1"
    assert again.answered("$e1") and not again.answered("$e2")
    assert list(again.pending()) == ["$e2"]
    assert again.turns("$root") == [("q2" * 30, "a2" * 30)]
    assert again.session("@bot:x") == {"user_id": "@bot:x", "device_id": "DEV", "access_token": "secret-token"}
    assert again.session("@other:x") is None
    assert stat.S_IMODE((tmp_path / "s" / "session.json").stat().st_mode) == 0o600
    assert "secret-token" not in (tmp_path / "s" / "state.json").read_text()


# ---------------------------------------------------------------- replies


def test_split_text_prefers_line_breaks_and_keeps_everything():
    text = ("word " * 50 + "\n") * 10
    parts = split_text(text, 300)
    assert "".join(parts) == text
    assert all(len(p) <= 300 for p in parts)
    assert all(p.endswith("\n") or p.endswith(" ") for p in parts[:-1])
    assert split_text("x" * 700, 300) == ["x" * 300, "x" * 300, "x" * 100]


class Recorder:
    """The ReplyStream's send seam, recording what would go to the homeserver."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    async def __call__(self, room_id, event_type, content, txn):
        self.events.append((txn, content))
        return f"$ev{len(self.events)}"


def test_reply_stream_throttles_edits_and_marks_the_final_version():
    now = [0.0]
    send = Recorder()
    stream = ReplyStream(send, "!r:x", "$cmd", "$root", edit_interval=1.5, max_edits=2, max_chars=1000,
                         clock=lambda: now[0])

    async def run():
        await stream.update("[a] He")  # posted at once
        await stream.update("[a] Hello")  # within the interval: no edit
        now[0] = 1.6
        await stream.update("[a] Hello wor")  # edit 1
        now[0] = 3.2
        await stream.update("[a] Hello world")  # edit 2
        now[0] = 5.0
        await stream.update("[a] Hello world!")  # max_edits reached: no edit
        await stream.finish("[a] Hello world!!", usage={"completion_tokens": 3})

    asyncio.run(run())
    bodies = [c.get("m.new_content", c)["body"] for _, c in send.events]
    assert bodies == ["[a] He", "[a] Hello wor", "[a] Hello world", "[a] Hello world!!"]
    first = send.events[0][1]
    assert first["m.relates_to"] == {"rel_type": "m.thread", "event_id": "$root", "is_falling_back": True,
                                     "m.in_reply_to": {"event_id": "$cmd"}}
    final = send.events[-1][1]
    assert final["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$ev1"}
    assert final["m.new_content"][DONE_KEY] is True and final["m.new_content"]["usage"] == {"completion_tokens": 3}
    assert all(DONE_KEY not in c.get("m.new_content", c) for _, c in send.events[:-1])
    assert send.events[0][0] == txn_id("$cmd", "part-0")  # stable: a retried post is deduplicated
    assert len({txn for txn, _ in send.events}) == len(send.events)


def test_reply_stream_posts_a_quick_answer_once_and_a_slow_one_after_the_window():
    now = [0.0]
    quick, slow = Recorder(), Recorder()
    quick_stream = ReplyStream(quick, "!r:x", "$cmd", "$cmd", edit_interval=1.5, max_edits=5, max_chars=1000,
                               first_post_after=0.5, clock=lambda: now[0])
    slow_stream = ReplyStream(slow, "!r:x", "$cmd2", "$cmd2", edit_interval=1.5, max_edits=5, max_chars=1000,
                              first_post_after=0.5, clock=lambda: now[0])

    async def run():
        for step, text in enumerate(["[a] He", "[a] Hello", "[a] Hello there"]):
            now[0] = 0.1 * step  # all inside the window
            await quick_stream.update(text)
            await slow_stream.update(text)
        await quick_stream.finish("[a] Hello there!")
        now[0] = 0.6
        await slow_stream.update("[a] Hello there, and")  # the window is over: posted
        now[0] = 0.9
        await slow_stream.finish("[a] Hello there, and more")

    asyncio.run(run())
    assert [(c["body"], c[DONE_KEY]) for _, c in quick.events] == [("[a] Hello there!", True)]  # one send
    assert quick_stream.sends == 1 and slow_stream.sends == 2
    bodies = [c.get("m.new_content", c)["body"] for _, c in slow.events]
    assert bodies == ["[a] Hello there, and", "[a] Hello there, and more"]
    assert DONE_KEY not in slow.events[0][1] and slow.events[1][1]["m.new_content"][DONE_KEY] is True


def test_reply_stream_splits_long_answers_over_messages():
    send = Recorder()
    stream = ReplyStream(send, "!r:x", "$cmd", "$cmd", edit_interval=0.0, max_edits=10, max_chars=500)
    text = "[a]" + " token" * 300

    async def run():
        await stream.update(text[:400])
        await stream.update(text)
        return await stream.finish(text)

    ids = asyncio.run(run())
    assert len(ids) == 4  # 1803 chars in parts of <= 500
    posted = [c for _, c in send.events if "m.new_content" not in c]
    assert len(posted) == 4
    finals = {}
    for _, content in send.events:
        target = content.get("m.relates_to", {}).get("event_id") if "m.new_content" in content else None
        body = content["m.new_content"] if target else content
        finals[target or f"$ev{send.events.index((_, content)) + 1}"] = body
    assert "".join(finals[i]["body"] for i in ids) == text
    assert [bool(finals[i].get(DONE_KEY)) for i in ids] == [False, False, False, True]  # complete only at the end


# ---------------------------------------------------------------- reading router answers


async def chunks(*items: bytes):
    for item in items:
        yield item


sse = sse_event  # what the router emits




def test_generation_reads_split_events_usage_and_resume():
    stream = (sse({"choices": [{"delta": {"role": "assistant"}}]}) + sse({"choices": [{"delta": {"content": "Hel"}}]})
              + b": resumed on b after 3 chars\n\n" + sse({"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]})
              + sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}) + b"data: [DONE]\n\n")
    generation = Generation("a", [], chunks(stream[:17], stream[17:60], stream[60:]))

    async def run():
        return [d async for d in generation.deltas()]

    assert "".join(asyncio.run(run())) == "Hello"
    assert generation.backend == "b" and generation.resumed_from == ["a"]
    assert generation.usage == {"prompt_tokens": 4, "completion_tokens": 2}
    assert generation.finish_reason == "length"


def test_generation_raises_a_mid_stream_error():
    error = error_event("backend a failed mid-stream")  # the router's own end of a broken stream
    generation = Generation("a", [], chunks(sse({"choices": [{"delta": {"content": "x"}}]}), error))

    async def run():
        return [d async for d in generation.deltas()]

    with pytest.raises(InferenceError) as info:
        asyncio.run(run())
    assert info.value.status == 502 and "mid-stream" in info.value.message
