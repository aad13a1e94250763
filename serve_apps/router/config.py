"""Pydantic models for the router's arguments: backends, breaker, health, auth.

Why pydantic: the router is configured from a serve YAML that users edit by hand; a typo must fail at
deploy time naming the key (``backends.2.timeouts.conect: extra field``), not at the first request.
Secrets are never values here, only references (an env var name or a file path), so configs and their
reprs can be logged and committed safely.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_apps.batch.config import BatchConfig
from serve_apps.config import EngineConfig
from serve_apps.connection_limits import ConnectionLimits
from serve_apps.matrix.config import MatrixConfig
from serve_apps.router.keys import ANONYMOUS, LEGACY, KeyConfig, RedisConfig, secret_values
from serve_apps.secrets import SecretRef
from serve_apps.validation import StrictModel

BackendKind = Literal["serve", "openai", "ollama", "anthropic"]


class Timeouts(StrictModel):
    """Seconds. For a stream, ``first_byte`` bounds the wait for the response head and the first
    events: a hung backend is abandoned (and the request falls back) after this, while a healthy long
    generation is bounded only by ``idle`` between chunks. A non-streaming answer's head arrives only
    with its last token, so it has a budget of its own, ``response``: none by default (as vLLM's own
    server), since a 2,000-token answer on a busy engine takes minutes; clients bound it with
    ``max_tokens`` or by going away (which aborts the generation). A set ``response`` that runs out
    moves the request to the next backend (a hang is then bounded, as ``first_byte`` bounds a stream's)
    without charging the breaker (slow is not broken); when every backend ran out, the client gets 504."""

    connect: float = Field(2.0, gt=0)
    first_byte: float = Field(30.0, gt=0)
    idle: float = Field(30.0, gt=0)
    response: float | None = Field(None, gt=0, description="non-streaming answers: seconds for the whole answer; unset = no limit")

    def head(self, stream: bool) -> float | None:
        """How long to wait for a response head (see the class docstring)."""
        return self.first_byte if stream else self.response


class BreakerConfig(StrictModel):
    """Per-backend circuit breaker: ``failure_threshold`` consecutive failures open it; after
    ``open_seconds`` one probe request (half-open) decides between closing and re-opening."""

    failure_threshold: int = Field(3, ge=1)
    open_seconds: float = Field(5.0, gt=0)
    half_open_max_requests: int = Field(1, ge=1)


class HealthConfig(StrictModel):
    """Background health checks; ``path`` defaults per kind (``/health``, ``/api/tags``, ...)."""

    interval: float = Field(5.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    path: str | None = None
    unhealthy_after: int = Field(1, ge=1, description="consecutive failed checks before marked down")


class BackendModel(StrictModel):
    """A model a backend serves: ``name`` is what the backend calls it; ``aliases`` are extra public
    names clients may use (the router rewrites them to ``name`` on the way out)."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)


class AffinityConfig(StrictModel):
    """``routing: prefix_affinity`` settings (see ``serve_apps.router.affinity``)."""

    block_size: int = Field(128, ge=16, le=65536, description="prompt block length in UTF-8 bytes (characters for ASCII)")
    spill_margin: int = Field(4, ge=0, description=(
        "take the least-loaded endpoint when the preferred one has more than this many extra outstanding requests"))
    min_gain: float = Field(0.1, ge=0, le=1, description=(
        "a busier endpoint is preferred only if it holds at least this fraction of the prompt more than the "
        "least-loaded one (a prefix cached everywhere, like a shared system prompt, is no reason to queue)"))
    capacity: int = Field(65536, ge=1, description="prefix blocks remembered (LRU); ~180 bytes of router memory each")


class BackendConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: BackendKind
    url: str | None = Field(None, description="base URL for HTTP kinds, e.g. http://host:8000")
    engine: str | None = Field(None, description="kind serve: name of an engine in `engines`")
    app: str | None = Field(None, description="kind serve: another Serve app holding the engine deployment")
    deployment: str | None = Field(None, description="kind serve with `app`: the deployment's name")
    transport: Literal["auto", "handle"] = Field(
        "auto", description=("kind serve: `auto` streams over HTTP from each engine worker's own port where "
                             "replicas publish one (measured faster), else the handle; `handle` always uses "
                             "DeploymentHandle.forward"))
    routing: Literal["least_outstanding", "prefix_affinity"] = Field(
        "least_outstanding", description=("kind serve: how a request picks one of the engine replicas; "
                                          "prefix_affinity sends prompts sharing a prefix to the same replica"))
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    models: list[BackendModel | str] = Field(
        default_factory=list, description="served models; empty = whatever the request asks"
    )
    tier: int = Field(0, ge=0, description="lower tiers are preferred; fallback walks up the tiers")
    weight: float = Field(1.0, gt=0, description="load share within a tier")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    health: HealthConfig = Field(default_factory=HealthConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    api_key: SecretRef | None = Field(None, description="credential reference (env var or file)")
    resume_on_failure: bool | None = Field(
        None, description="continue a broken stream here; default: True where the kind supports it"
    )
    max_connections: int = Field(1024, ge=1)
    default_max_tokens: int = Field(1024, ge=1, description="anthropic: max_tokens is mandatory")
    anthropic_version: str = "2023-06-01"

    @model_validator(mode="after")
    def _target(self) -> BackendConfig:
        if self.kind == "serve":
            if bool(self.engine) == bool(self.app):
                raise ValueError("kind serve needs exactly one of `engine` (an entry of engines) or `app`")
            if self.app and not self.deployment:
                raise ValueError("kind serve with `app` also needs `deployment`")
            if self.url:
                raise ValueError("kind serve takes no `url`; use kind openai for an engine over HTTP")
            if self.routing == "prefix_affinity" and self.transport == "handle":
                raise ValueError("routing prefix_affinity picks replicas by their own ports: it needs transport auto")
        elif self.routing != "least_outstanding":
            raise ValueError("`routing` applies to kind serve only (it picks among an engine's replicas)")
        elif self.transport != "auto":
            raise ValueError("`transport` applies to kind serve only")
        elif not self.url:
            raise ValueError(f"kind {self.kind} needs `url`")
        if self.url:
            self.url = self.url.rstrip("/")
        return self

    @property
    def model_entries(self) -> list[BackendModel]:
        return [BackendModel(name=m) if isinstance(m, str) else m for m in self.models]


def _unique_names(names: list[str], problem: str) -> list[str]:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{problem}: {', '.join(dupes)}")
    return names


class AuthConfig(StrictModel):
    """Client API keys. ``api_keys``: unnamed keys from an env var and/or a file, one per line (or comma
    separated in the env var). ``keys``: named keys with limits and allow-lists (see ``keys.py``).
    ``redis``: where limits are counted when several router replicas must share them (else in memory,
    per replica). No keys configured = no auth; every caller is then ``anonymous``."""

    api_keys: SecretRef | None = None
    keys: list[KeyConfig] = Field(default_factory=list)
    redis: RedisConfig | None = None

    @model_validator(mode="after")
    def _names(self) -> AuthConfig:
        names = _unique_names([k.name for k in self.keys], "keys: duplicate key names")
        reserved = {ANONYMOUS} | ({LEGACY} if self.api_keys is not None else set())
        for index, name in enumerate(names):
            if name in reserved:
                raise ValueError(f"keys.{index}.name: {name!r} is reserved (the name of "
                                 f"{'callers when auth is off' if name == ANONYMOUS else 'the keys in api_keys'})")
        return self

    def key_names(self) -> set[str]:
        """The names callers act for: every named key, and ``default`` for the keys of ``api_keys``."""
        return {k.name for k in self.keys} | ({LEGACY} if self.api_keys is not None else set())

    def load_keys(self) -> frozenset[str]:
        """The unnamed keys of ``api_keys``."""
        if self.api_keys is None:
            return frozenset()
        keys = frozenset(secret_values(self.api_keys))
        if not keys:
            raise ValueError("auth.api_keys is configured but no key was found in its env/file")
        return keys


class RouterConfig(StrictModel):
    backends: list[BackendConfig] = Field(min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    max_attempts: int = Field(4, ge=1, description="backends tried per request (first + fallbacks)")
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_retry_after: float = Field(60.0, ge=0, description="cap on a backend's Retry-After cool-down")

    @model_validator(mode="after")
    def _unique(self) -> RouterConfig:
        names = _unique_names([b.name for b in self.backends], "duplicate backend names")
        for index, key in enumerate(self.auth.keys):
            unknown = sorted(set(key.backends or ()) - set(names))
            if unknown:
                raise ValueError(f"auth.keys.{index}.backends: unknown backend(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(names)}")
        return self


class ListenAddress(ConnectionLimits):
    """The router's own data-plane port (see ``serve_apps.listener``), and the bounds on a slow client
    there (``serve_apps.connection_limits``)."""

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class RouterDeploymentOptions(StrictModel):
    """Serve options of the router deployment itself."""

    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(1024, ge=1)
    num_cpus: float = Field(0.0, ge=0)
    access_log: bool = Field(False, description="Serve's per-request access log line (costs CPU per request)")
    listen: ListenAddress | None = Field(
        None, description="also serve the router on this address, bypassing Serve's ingress (the fast path)")
    colocate: bool = Field(
        False, description="run the app's engines inside each router replica and call them in process (no "
        "socket hop): for single-node profiles; scale with router.num_replicas, not engines[].num_replicas")


class RouterAppArgs(RouterConfig):
    """Arguments of ``build_router_app``: the router config plus in-cluster engine replicas that
    ``kind: serve`` backends refer to by ``engine`` name."""

    engines: list[EngineConfig] = Field(default_factory=list)
    router: RouterDeploymentOptions = Field(default_factory=RouterDeploymentOptions)
    batch: BatchConfig = Field(default_factory=BatchConfig, description="/v1/batch and the OpenAI Batch API")
    matrix: MatrixConfig | None = Field(None, description="a Matrix chat bot answering through this router")

    @model_validator(mode="after")
    def _matrix_acts_for_a_key(self) -> RouterAppArgs:
        """The bot's requests act for configured keys only: a key it names must exist, and with keys
        on it must name one (else it would be ``anonymous``: no allow-list, no limit, no account)."""
        if self.matrix is None:
            return self
        known = self.auth.key_names()
        for where, name in self.matrix.key_names():
            if name not in known:
                raise ValueError(f"{where}: no auth key is named {name!r} "
                                 f"(known: {', '.join(sorted(known)) or 'none: auth is off'})")
        if known and self.matrix.key is None:
            raise ValueError(f"matrix.key: the router has auth keys, so the bot must act for one of them "
                             f"({', '.join(sorted(known))})")
        return self

    @model_validator(mode="after")
    def _engines_exist(self) -> RouterAppArgs:
        known = {e.name for e in self.engines}
        for backend in self.backends:
            if backend.kind == "serve" and backend.engine and backend.engine not in known:
                raise ValueError(
                    f"backend {backend.name!r}: engine {backend.engine!r} is not in engines "
                    f"(known: {', '.join(sorted(known)) or 'none'})"
                )
        if self.router.colocate:
            for index, backend in enumerate(self.backends):
                if backend.routing == "prefix_affinity" and backend.engine in known:
                    raise ValueError(
                        f"backends.{index}: routing prefix_affinity chooses among engine replicas; with "
                        "router.colocate each router replica calls its own engine in process")
            for index, engine in enumerate(self.engines):
                if engine.num_replicas != 1 or engine.autoscaling is not None:
                    raise ValueError(
                        f"engines.{index}: with router.colocate the engine runs inside each router replica; "
                        "remove num_replicas/autoscaling here and set router.num_replicas")
        return self
