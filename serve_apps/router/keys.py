"""Named API keys: who is calling, what they may use, and how fast.

``auth.keys`` gives each client key (an env/file reference, never the value) a name, optional limits
(requests and tokens per minute, see ``limits.py``) and optional allow-lists of models and backends.
The name is what logs, metrics and limits use; the key itself is held only as a SHA-256 digest, so a
lookup is one hash and one dict access (no per-key loop, and timing reveals nothing about a key: an
attacker controls the input of the hash, not its output). ``auth.api_keys`` (unnamed keys, no limits)
keeps working: those keys are named ``default``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from serve_apps.secrets import SecretRef
from serve_apps.validation import StrictModel

ANONYMOUS = "anonymous"  # the name of every request when auth is off
LEGACY = "default"  # the name of the keys in ``auth.api_keys``
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class KeyConfig(StrictModel):
    """One named client key. ``key`` may hold several values (comma separated in the env var, one per
    line in the file), e.g. the old and the new key during a rotation: they share name and limits."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    key: SecretRef
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion tokens, from the engines' usage")
    models: list[str] | None = Field(None, description="models this key may use (names or aliases); omitted: all")
    backends: list[str] | None = Field(None, description="backends this key may reach; omitted: all")


class RedisConfig(StrictModel):
    """The store that makes limits hold across router replicas. The password is a reference; a URL
    carrying one inline is refused (configs are logged and committed)."""

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretRef | None = None
    prefix: str = Field("rsc:ratelimit", min_length=1, description="key prefix, to share a Redis with others")
    timeout: float = Field(0.25, gt=0, description="seconds per call; a slower Redis counts as down (fail open)")
    retry_interval: float = Field(1.0, gt=0, description="after a failure, seconds before Redis is tried again")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.password:
            raise ValueError("must not carry a password: give it as `password: {env: ..}` or `{file: ..}`")
        return url


def secret_values(ref: SecretRef) -> list[str]:
    """Every key a reference holds: the env var split on commas, the file on lines (both may be set)."""
    values: list[str] = []
    if ref.env:
        values.extend(os.environ.get(ref.env, "").split(","))
    if ref.file is not None and ref.file.expanduser().is_file():
        values.extend(ref.file.expanduser().read_text().splitlines())
    return [v.strip() for v in values if v.strip()]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller as the router sees it: a name and what it may do. Holds no secret."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    models: frozenset[str] | None = None
    backends: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    @classmethod
    def from_config(cls, config: KeyConfig) -> ApiKey:
        return cls(config.name, config.requests_per_minute, config.tokens_per_minute,
                   frozenset(config.models) if config.models is not None else None,
                   frozenset(config.backends) if config.backends is not None else None)


ANONYMOUS_KEY = ApiKey(ANONYMOUS)


class KeyTable:
    """Authorization header -> ``ApiKey``. Empty table: auth is off, every caller is ``anonymous``."""

    __slots__ = ("_by_digest", "_by_name", "names")

    def __init__(self, entries: dict[str, ApiKey]) -> None:
        self._by_digest = {_digest(secret.encode()): key for secret, key in entries.items()}
        self._by_name = {key.name: key for key in entries.values()}
        self.names = sorted(self._by_name)

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    @classmethod
    def load(cls, api_keys: SecretRef | None, keys: list[KeyConfig]) -> KeyTable:
        """Read every referenced key; a configured reference that yields nothing, or one key value
        under two names, fails here (at replica start), naming the entry but never the value."""
        entries: dict[str, ApiKey] = {}
        sources: list[tuple[str, ApiKey, SecretRef]] = []
        if api_keys is not None:
            sources.append(("auth.api_keys", ApiKey(LEGACY), api_keys))
        for index, config in enumerate(keys):
            sources.append((f"auth.keys.{index} ({config.name})", ApiKey.from_config(config), config.key))
        for where, key, ref in sources:
            values = secret_values(ref)
            if not values:
                raise ValueError(f"{where} is configured but no key was found in its env/file")
            for value in values:
                other = entries.get(value)
                if other is not None and other.name != key.name:
                    raise ValueError(f"{where}: a key value is also used by key {other.name!r}")
                entries[value] = key
        return cls(entries)

    def lookup(self, authorization: bytes | None) -> ApiKey | None:
        """The key named by an ``Authorization: Bearer`` header; None if missing or unknown."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        return self._by_digest.get(_digest(authorization[7:].strip()))

    def named(self, name: str | None) -> ApiKey | None:
        """The key called ``name``, for a caller inside the app that acts for a key (a batch job, the
        Matrix bot): it carries the key's name, never its secret. Auth off: every caller is
        ``anonymous``. None: auth is on and no key has that name (or none was named)."""
        if not self._by_digest:
            return ANONYMOUS_KEY
        return self._by_name.get(name) if name is not None else None

    def __repr__(self) -> str:
        return f"KeyTable(names={self.names})"


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()
