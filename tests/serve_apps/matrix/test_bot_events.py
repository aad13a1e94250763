"""How the sync loop routes events, without a homeserver: events are parsed by matrix-nio from the
JSON a homeserver sends; the command handler is replaced by a recorder of what would be answered."""

from __future__ import annotations

import asyncio

from nio import RoomMessageText

from serve_apps.matrix.bot import MatrixBot
from serve_apps.matrix.config import MatrixConfig
from serve_apps.matrix.handlers import Origin

ROOM = "!room:x.org"


class Recorder:
    def __init__(self) -> None:
        self.handled: list[tuple[str, str, str]] = []
        self.said: list[tuple[str, str]] = []

    async def handle(self, command, origin: Origin) -> None:
        self.handled.append((command.name, origin.event_id, origin.thread_root))

    async def say(self, origin: Origin, text: str, role: str = "part-0") -> None:
        self.said.append((origin.event_id, text))


def message(event_id: str, sender: str, body: str, relates: dict | None = None) -> RoomMessageText:
    content = {"msgtype": "m.text", "body": body, **({"m.relates_to": relates} if relates else {})}
    return RoomMessageText.from_dict({"event_id": event_id, "sender": sender, "origin_server_ts": 1,
                                      "type": "m.room.message", "content": content})


def run_events(tmp_path, events, **config) -> tuple[MatrixBot, Recorder]:
    settings = {"homeserver": "http://127.0.0.1:1", "user_id": "@bot:x.org", "access_token": {"env": "UNUSED"},
                "store_path": str(tmp_path / "store"), "allow": {"users": ["@alice:x.org", "*:friends.org"]},
                **config}

    async def run() -> tuple[MatrixBot, Recorder]:
        bot = MatrixBot(MatrixConfig.model_validate(settings), inference=None)
        recorder = Recorder()
        bot.handler = recorder
        for event in events:
            bot._guard(bot._event, ROOM, event)
        await asyncio.gather(*bot._tasks)
        return bot, recorder

    return asyncio.run(run())


def test_commands_from_allowed_people_become_tasks_with_their_thread(tmp_path):
    _, recorder = run_events(tmp_path, [
        message("$1", "@alice:x.org", "!infer hello"),
        message("$2", "@bob:friends.org", "!models"),
        message("$3", "@alice:x.org", "!infer more", {"rel_type": "m.thread", "event_id": "$1"}),
        message("$4", "@mallory:evil.org", "!infer let me in"),  # not allowed: ignored silently
        message("$5", "@alice:x.org", "just chatting"),  # not a command
        message("$6", "@bot:x.org", "!infer talking to myself"),  # the bot's own message
        message("$7", "@alice:x.org", "* !infer edited", {"rel_type": "m.replace", "event_id": "$1"}),
    ])
    assert recorder.handled == [("infer", "$1", "$1"), ("models", "$2", "$2"), ("infer", "$3", "$1")]
    assert recorder.said == []


def test_bad_commands_and_rate_limits_get_one_short_reply(tmp_path):
    events = [message("$bad", "@alice:x.org", "!infer --max-tokens many hi")]
    events += [message(f"$r{i}", "@alice:x.org", f"!infer question {i}") for i in range(4)]
    _, recorder = run_events(tmp_path, events, rate_limit={"requests": 2, "per_seconds": 60})
    assert [event for _, event, _ in recorder.handled] == ["$r0", "$r1"]
    assert recorder.said[0] == ("$bad", "--max-tokens needs a whole number")
    assert len(recorder.said) == 2 and recorder.said[1][0] == "$r2"  # one warning per window, not per command
    assert recorder.said[1][1].startswith("Slow down a little")


def test_pending_commands_resume_once_and_answered_ones_never(tmp_path):
    bot, recorder = run_events(tmp_path, [message("$1", "@alice:x.org", "!infer first")])
    bot.store.add_pending("$2", {"room_id": ROOM, "sender": "@alice:x.org", "thread_root": "$2", "body": "!infer second"})
    assert list(bot.store.pending()) == ["$1", "$2"]  # the recorder does not mark answers
    bot.store.mark_answered("$1")
    bot.store.save()  # what the sync loop does after each sync

    async def resume() -> None:
        again = MatrixBot(bot.config, inference=None)  # a restart on the same store
        again.handler = recorder
        again._resume_pending()
        again._guard(again._event, ROOM, message("$2", "@alice:x.org", "!infer second"))  # also in the timeline
        again._guard(again._event, ROOM, message("$1", "@alice:x.org", "!infer first"))  # answered before
        await asyncio.gather(*again._tasks)

    asyncio.run(resume())
    assert [event for _, event, _ in recorder.handled] == ["$1", "$2"]
