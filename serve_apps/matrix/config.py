"""Pydantic models for the ``matrix:`` section of the router app's args.

Credentials are references (``SecretRef``: an env var or a file), never values, so the config, its
repr and the logs stay safe to share. Allow-lists default to empty: nobody can use the bot until they
are configured.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from serve_apps.secrets import SecretRef
from serve_apps.validation import StrictModel


def _user_pattern(pattern: str) -> str:
    if not pattern.startswith(("@", "*")) or ":" not in pattern:
        raise ValueError(f"{pattern!r} is neither a user ID (@name:server) nor a pattern (*:server)")
    return pattern


def _room_pattern(pattern: str) -> str:
    if not pattern.startswith(("!", "*")):
        raise ValueError(f"{pattern!r} is not a room ID (!id:server) or a pattern of room IDs")
    return pattern


class AllowList(StrictModel):
    """Who may use the bot. ``users`` holds Matrix IDs or glob patterns: ``@alice:example.org``,
    ``*:example.org`` (a whole server). ``rooms`` holds room IDs or patterns; empty = any room an
    allowed user invites the bot to."""

    users: list[Annotated[str, AfterValidator(_user_pattern)]] = Field(default_factory=list)
    rooms: list[Annotated[str, AfterValidator(_room_pattern)]] = Field(default_factory=list)

    def user_allowed(self, user_id: str) -> bool:
        return any(fnmatchcase(user_id, pattern) for pattern in self.users)

    def room_allowed(self, room_id: str) -> bool:
        return not self.rooms or any(fnmatchcase(room_id, pattern) for pattern in self.rooms)


class KeyRule(StrictModel):
    """Commands from ``room`` and/or by ``user`` (IDs or glob patterns, as in ``allow``) act for the
    auth key named ``key`` instead of the bot's own ``key``."""

    room: Annotated[str, AfterValidator(_room_pattern)] | None = None
    user: Annotated[str, AfterValidator(_user_pattern)] | None = None
    key: str = Field(min_length=1, description="a key name of the router's auth.keys")

    @model_validator(mode="after")
    def _some_match(self) -> KeyRule:
        if self.room is None and self.user is None:
            raise ValueError("give room, user or both: a rule that matches every command is the bot's own `key`")
        return self

    def matches(self, room_id: str, sender: str) -> bool:
        return ((self.room is None or fnmatchcase(room_id, self.room))
                and (self.user is None or fnmatchcase(sender, self.user)))


class RateLimit(StrictModel):
    """Per-user limit: at most ``requests`` commands in any ``per_seconds`` window."""

    requests: int = Field(10, ge=1)
    per_seconds: float = Field(60.0, gt=0)


class StreamingConfig(StrictModel):
    """Replies are posted at the first tokens (or whole, when the answer is done within
    ``first_post_after``) and edited as tokens arrive (``m.replace``)."""

    first_post_after: float = Field(
        0.5, ge=0, le=10,
        description="seconds to wait for the whole answer before posting a first part (0: post at the first token)")
    edit_interval: float = Field(1.5, ge=0.2, description="seconds between edits of one reply (rate limits)")
    max_edits: int = Field(60, ge=0, description="edits per reply part; the final edit always goes out")
    max_message_chars: int = Field(
        16000, ge=500, le=30000,
        description="split longer answers into several messages (Matrix events are capped at 64 KiB)")


class SyncConfig(StrictModel):
    timeout_ms: int = Field(30000, ge=0, description="long-poll time of one /sync")
    backoff_initial: float = Field(1.0, gt=0)
    backoff_max: float = Field(30.0, gt=0, description="cap of the reconnect backoff when the homeserver is down")
    max_rate_limited: int = Field(3, ge=0, description="429 retries per request before giving up (nio: forever)")
    max_timeouts: int = Field(2, ge=0, description="connection-error retries inside one request")
    stale_after: float = Field(300.0, gt=0, description="health check fails when the loop made no progress this long")


class LeaseConfig(StrictModel):
    """Leader election between replicas: only the lease holder syncs and answers. The lease dies with
    its holder's process; followers look for a free lease every ``check_every`` seconds, which bounds
    the take-over time."""

    check_every: float = Field(2.0, gt=0)


class MatrixConfig(StrictModel):
    homeserver: str = Field(pattern=r"^https?://", description="client-server API base URL")
    user_id: str = Field(pattern=r"^@[^:]+:.+$", description="the bot's Matrix ID, e.g. @infer-bot:example.org")
    access_token: SecretRef | None = Field(None, description="the bot's access token (env var or file)")
    password: SecretRef | None = Field(None, description="password login; the token is stored in store_path")
    device_id: str | None = Field(None, description="with access_token: its device (looked up if unset)")
    device_name: str = "ray-serve-cai bot"
    store_path: Path = Field(description="sync token, login session and E2EE keys persist here (shared by replicas)")
    encryption: bool = Field(False, description="answer in encrypted rooms (matrix-nio[e2e])")
    allow: AllowList = Field(default_factory=AllowList)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    key: str | None = Field(None, min_length=1, description=(
        "the auth key (a name in the router's auth.keys) the bot's requests act for: its allow-lists, "
        "limits and token account; required when the router has keys"))
    keys: list[KeyRule] = Field(default_factory=list, description=(
        "per room or user, another key to act for; the first rule that matches wins, else `key`"))
    command_prefix: str = Field("!", min_length=1, max_length=4)
    model: str | None = Field(None, description="model asked for when a command names none (default: the first served)")
    max_tokens: int = Field(256, ge=1, description="default max_tokens of !infer")
    max_tokens_limit: int = Field(2048, ge=1, description="largest --max-tokens a user may ask for")
    context_tokens: int = Field(2048, ge=0, description="token budget of a thread's earlier turns sent as context")
    system_prompt: str | None = None
    request_defaults: dict[str, Any] = Field(
        default_factory=dict, description="extra fields of every chat request, e.g. temperature or top_p")
    num_replicas: int = Field(1, ge=1, description="replicas of the bot deployment; one holds the lease")
    num_cpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _credentials(self) -> MatrixConfig:
        if (self.access_token is None) == (self.password is None):
            raise ValueError("give exactly one of access_token or password (as env/file references)")
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError("max_tokens must not exceed max_tokens_limit")
        self.homeserver = self.homeserver.rstrip("/")
        return self

    def key_for(self, room_id: str, sender: str) -> str | None:
        """The key name a command from ``sender`` in ``room_id`` acts for."""
        return next((rule.key for rule in self.keys if rule.matches(room_id, sender)), self.key)

    def key_names(self) -> list[tuple[str, str]]:
        """(where, name) of every key name this config uses, for checking against the router's keys."""
        named = [("matrix.key", self.key)] if self.key is not None else []
        return named + [(f"matrix.keys.{index}.key", rule.key) for index, rule in enumerate(self.keys)]
