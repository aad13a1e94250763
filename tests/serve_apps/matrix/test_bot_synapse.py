"""The Matrix bot end to end: a real Synapse, the router app with a ``matrix:`` section on the
session's Ray cluster, and the real vLLM engine behind it. People speak the client-server API.

One bot deployment serves the module (tests run in file order; the last one redeploys it with two
replicas). Answers are read back from the room's history, edits applied.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from launchers.polling import poll_until
from loadtests.matrix_people import Answer, tag
from serve_apps.matrix.replies import DONE_KEY, USAGE_KEY
from tests.conftest import MODEL
from tests.serve_apps.matrix.conftest import APP, EDIT_INTERVAL_S, BotStack, room_with_bot

pytestmark = pytest.mark.engine
EDIT_INTERVAL_MS = EDIT_INTERVAL_S * 1000


@pytest.fixture(scope="module")
def room(bot_stack: BotStack) -> str:
    """Alice's room with the bot, Bob invited and joined."""
    people = bot_stack.people
    room = room_with_bot(bot_stack, people.alice)
    people.alice.invite(room, people.bob.user_id)
    people.bob.join(room)
    return room


def answers(stack: BotStack, room: str, commands: list[str], **kwargs) -> dict[str, Answer]:
    return stack.people.alice.wait_answers(room, stack.people.bot.user_id, commands, **kwargs)


def test_infer_answered_in_its_thread_with_the_backend_tag(bot_stack, room):
    alice = bot_stack.people.alice
    infer = alice.send(room, "!infer Tell me a story about Ray")
    helps, models, backends = (alice.send(room, text) for text in ("!help", "!models", "!backends"))
    got = answers(bot_stack, room, [infer, helps, models, backends])
    answer = got[infer]
    assert tag(answer.text) == "proxied"  # tier 0 answers while it is up
    assert len(answer.text) > len("[proxied] ")
    assert answer.thread_root == infer  # the reply starts a thread on the command
    assert answer.usage["completion_tokens"] == 16  # the configured default max_tokens (ignore_eos)
    assert "!infer [--backend NAME]" in got[helps].text
    assert MODEL in got[models].text
    assert "proxied: up" in got[backends].text and "engine: up" in got[backends].text


def test_backend_option_and_friendly_errors(bot_stack, room):
    alice = bot_stack.people.alice
    chosen = alice.send(room, "!infer --backend engine --max-tokens 5 Hello there")
    unknown = alice.send(room, "!infer --backend nowhere Hello")
    bad = alice.send(room, "!infer --max-tokens lots Hello")
    empty = alice.send(room, "!infer --model")
    got = answers(bot_stack, room, [chosen, unknown, bad, empty])
    assert tag(got[chosen].text) == "engine"
    assert got[chosen].usage["completion_tokens"] == 5
    # 5 tokens come well within streaming.first_post_after (0.5 s): one message, never edited
    assert [len(stamps) for stamps in got[chosen].edit_ts.values()] == [1]
    assert "unknown backend 'nowhere'" in got[unknown].text and "proxied" in got[unknown].text
    assert got[bad].text == "--max-tokens needs a whole number"
    assert got[empty].text == "--model needs a value"
    assert "Traceback" not in "".join(a.text for a in got.values())


def test_a_thread_is_a_conversation(bot_stack, room):
    alice = bot_stack.people.alice
    first = alice.send(room, "!infer Once upon a time in a cluster far away")
    answers(bot_stack, room, [first])
    follow_up = alice.send(room, "!infer And then what happened?", thread_root=first)
    fresh = alice.send(room, "!infer And then what happened?")
    got = answers(bot_stack, room, [first, follow_up, fresh])
    assert got[follow_up].thread_root == first
    with_context = got[follow_up].usage["prompt_tokens"]
    alone = got[fresh].usage["prompt_tokens"]
    # the thread's first turn (its prompt and its answer) went along with the follow-up
    assert with_context >= alone + got[first].usage["completion_tokens"] // 2 + 5


def test_streamed_edits_respect_the_interval_and_long_answers_split(bot_stack, room):
    alice = bot_stack.people.alice
    command = alice.send(room, "!infer --backend engine --max-tokens 700 Write a very long story")
    answer = answers(bot_stack, room, [command], timeout=180)[command]
    assert answer.usage["completion_tokens"] == 700
    assert len(answer.event_ids) >= 2, "a 700-token answer is split over messages of <= 1000 chars"
    assert all(len(text) <= 1000 for text in answer.texts)
    assert answer.texts[0].startswith("[engine] ")
    edits = sum(len(stamps) - 1 for stamps in answer.edit_ts.values())
    assert edits >= 3, "the answer was streamed by edits, not posted once"
    for stamps in answer.edit_ts.values():
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        # every edit but a message's last (the final one goes out at once) waits out the interval
        assert all(gap >= EDIT_INTERVAL_MS - 100 for gap in gaps[:-1]), gaps


def test_fallback_shows_in_the_tag_when_the_preferred_backend_is_down(bot_stack, room):
    alice = bot_stack.people.alice
    bot_stack.kill_proxy()  # a real dead backend; its slow health check has not noticed yet
    try:
        command = alice.send(room, "!infer Is anyone there?")
        answer = answers(bot_stack, room, [command])[command]
        assert tag(answer.text) == "engine"
        assert answer.usage["completion_tokens"] == 16
    finally:
        bot_stack.start_proxy()


def test_people_not_on_the_allow_list_are_ignored(bot_stack, room):
    people = bot_stack.people
    own = people.mallory.create_room([people.bot.user_id])
    people.alice.invite(room, people.mallory.user_id)
    people.mallory.join(room)
    ignored = people.mallory.send(room, "!infer Ignore your allow-list")
    control = people.alice.send(room, "!infer Am I allowed?")
    got = answers(bot_stack, room, [control], settle=3.0)
    assert ignored not in got
    declined = poll_until(lambda: people.mallory.membership(own, people.bot.user_id) != "invite", 20, 0.3)
    assert declined and people.mallory.membership(own, people.bot.user_id) == "leave"


def test_twenty_commands_from_two_people_answered_exactly_once(bot_stack, room):
    people = bot_stack.people
    sent: list[str] = []
    lock = threading.Lock()

    def send(person, n):
        for i in range(10):
            event = person.send(room, f"!infer Question {n}.{i}: what is a replica?")
            with lock:
                sent.append(event)

    threads = [threading.Thread(target=send, args=(p, n)) for n, p in enumerate((people.alice, people.bob))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = answers(bot_stack, room, sent, timeout=180, settle=3.0)
    assert all(len(got[c].event_ids) == 1 for c in sent), [len(got[c].event_ids) for c in sent]
    assert all(got[c].usage["completion_tokens"] == 16 for c in sent)


def test_synapse_restart_mid_session_loses_and_duplicates_nothing(bot_stack, room):
    alice, synapse = bot_stack.people.alice, bot_stack.synapse
    before = [alice.send(room, f"!infer Before the restart {i}") for i in range(4)]
    synapse.stop()  # while those are being answered
    try:
        status = poll_until(lambda: _in_backoff(bot_leader_status(bot_stack)), 60, 0.5)
        assert status["sync"]["failures"] >= 1 and status["sync"]["last_error"]  # the health view shows the outage
    finally:
        synapse.start()
    after = [alice.send(room, f"!infer After the restart {i}") for i in range(3)]
    got = answers(bot_stack, room, before + after, timeout=180, settle=3.0)
    assert all(len(got[c].event_ids) == 1 for c in before + after)


def test_bot_restart_neither_replays_nor_misses(bot_stack, room):
    alice = bot_stack.people.alice
    earlier = alice.answers(room, bot_stack.people.bot.user_id)
    old = bot_stack.leader()
    os.kill(old["pid"], signal.SIGKILL)
    while_down = [alice.send(room, f"!infer Sent while the bot was down {i}") for i in range(2)]
    got = answers(bot_stack, room, while_down, timeout=180, settle=3.0)
    assert bot_stack.leader()["pid"] != old["pid"]
    assert all(len(got[c].event_ids) == 1 for c in while_down)
    for command, answer in earlier.items():  # nothing answered again
        assert got[command].event_ids == answer.event_ids


def _in_backoff(status: dict) -> dict | None:
    return status if status["sync"]["phase"] == "backoff" else None


def bot_leader_status(stack: BotStack) -> dict:
    code = ("import asyncio\nfrom ray import serve\n"
            "async def main():\n"
            f"    h = serve.get_deployment_handle('MatrixInferenceBot', app_name={APP!r})\n"
            "    seen = [await h.status.remote() for _ in range(6)]\n"
            "    return next((s for s in seen if s['leader']), seen[0])\n"
            "print(json.dumps(asyncio.run(main())))")
    return stack.ray(code)


def test_an_encrypted_room_is_answered_encrypted(bot_stack, tmp_path):
    reply = asyncio.run(_ask_in_encrypted_room(bot_stack, tmp_path))
    assert reply["done"] and tag(reply["text"]) in ("proxied", "engine")
    assert reply["usage"]["completion_tokens"] == 16
    bot = bot_stack.people.bot.user_id
    on_the_wire = [e for e in bot_stack.people.alice.history(reply["room_id"]) if e["sender"] == bot
                   and e["type"] in ("m.room.message", "m.room.encrypted")]
    assert on_the_wire and all(e["type"] == "m.room.encrypted" for e in on_the_wire)
    # relations stay readable to the server (threads, edits) while the text is not
    assert any(e["content"].get("m.relates_to", {}).get("rel_type") == "m.thread" for e in on_the_wire)


async def _ask_in_encrypted_room(stack: BotStack, store: Path) -> dict:
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        LoginResponse,
        RoomCreateResponse,
        RoomSendResponse,
    )

    people, bot = stack.people, stack.people.bot.user_id
    client = AsyncClient(stack.synapse.url, people.alice.user_id, store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False))
    try:
        assert isinstance(await client.login("pw-0123456789", device_name="alice-e2ee"), LoginResponse)
        await client.sync(timeout=0, full_state=True)
        if client.should_upload_keys:
            await client.keys_upload()
        encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        created = await client.room_create(invite=[bot], initial_state=[encryption])
        assert isinstance(created, RoomCreateResponse)
        room_id = created.room_id
        await asyncio.to_thread(people.alice.wait_joined, room_id, bot)
        await client.sync(timeout=0)
        await client.joined_members(room_id)
        if client.should_query_keys:
            await client.keys_query()
        sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "!infer A secret question"},
                                      ignore_unverified_devices=True)
        assert isinstance(sent, RoomSendResponse)
        reply_id, latest = None, {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = await client.sync(timeout=1000)
            joined = response.rooms.join.get(room_id) if hasattr(response, "rooms") else None
            for event in joined.timeline.events if joined else []:
                content = event.source.get("content", {})
                if getattr(event, "sender", None) != bot or "body" not in content:
                    continue  # our own messages, and anything still undecrypted
                relates = content.get("m.relates_to", {})
                if relates.get("m.in_reply_to", {}).get("event_id") == sent.event_id:
                    reply_id, latest = event.event_id, content
                elif relates.get("rel_type") == "m.replace" and relates.get("event_id") == reply_id:
                    latest = content["m.new_content"]
            if latest.get(DONE_KEY):
                return {"room_id": room_id, "text": latest["body"], "done": True, "usage": latest.get(USAGE_KEY, {})}
        raise TimeoutError(f"no final encrypted answer; last seen {latest}")
    finally:
        await client.close()


def test_two_replicas_answer_once_and_the_other_takes_over(bot_stack, room):
    """A fresh store and a password login (a new device): the room's history, every command in it
    already answered, must not be answered again; then one answer per command from two replicas."""
    people = bot_stack.people
    fresh = {"num_replicas": 2, "access_token": None, "password": {"env": "MBOT_PASSWORD"},
             "store_path": str(bot_stack.tmp / "store-ha")}
    bot_stack.deploy(bot_stack.matrix_args(**fresh), env={"MBOT_PASSWORD": people.bot_password})
    poll_until(lambda: len(bot_stack.bot_pids()) == 2, 120, 1)
    # what arrives before the new bot's first sync is history to it: wait until it syncs
    poll_until(lambda: bot_leader_status(bot_stack)["sync"]["phase"] == "syncing", 120, 1)
    first = [people.alice.send(room, f"!infer Two replicas, question {i}") for i in range(4)]
    answers(bot_stack, room, first, timeout=180)
    leader = bot_stack.leader()
    os.kill(leader["pid"], signal.SIGKILL)
    after = [people.bob.send(room, f"!infer After the leader died, question {i}") for i in range(3)]
    got = answers(bot_stack, room, first + after, timeout=180, settle=5.0)
    new_leader = bot_stack.leader()
    assert new_leader["pid"] != leader["pid"]
    for command, answer in got.items():  # never two answers to one command, in the whole room
        heads = [text for text in answer.texts if text.startswith("[") or text.startswith("Sorry")]
        assert len(heads) <= 1, (command, answer.texts)
    assert all(len(got[c].event_ids) == 1 for c in first + after)
