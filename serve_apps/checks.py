"""Offline checks of serve configs, next to the app builders they mirror.

``parse_engine_config`` and ``parse_router_args`` are exactly what the builders apply to their
``args`` at deploy time; ``config_problems`` runs them (plus Serve's own schema) over a whole serve
config, as ``ray-serve-cai check`` and ``up`` do before deploying. Nothing here imports Ray Serve
unless a whole config is checked, so the CLI and the config generator stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from serve_apps.config import BUILTIN_PREFIX, EngineConfig
from serve_apps.engines.registry import get_registry
from serve_apps.router.config import RouterAppArgs
from serve_apps.validation import format_validation_error


class ConfigError(ValueError):
    """A serve config's args are invalid; the message names every bad key."""


def parse_engine_config(args: dict[str, Any] | None) -> EngineConfig:
    try:
        config = EngineConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid engine app args: {format_validation_error(exc)}") from None
    if config.engine not in get_registry() and ":" not in config.engine:
        known = ", ".join(get_registry().names())
        raise ConfigError(f"invalid engine app args: engine: unknown engine {config.engine!r}; known: {known}")
    return config


def parse_router_args(args: dict[str, Any]) -> RouterAppArgs:
    try:
        return RouterAppArgs.model_validate(args)
    except ValidationError as exc:
        raise ConfigError("invalid router args: " + format_validation_error(exc)) from None


# import_path of each app builder -> the parser it applies to its args.
ARG_PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "serve_apps.apps:build_app": parse_engine_config,
    "serve_apps.router.app:build_router_app": parse_router_args,
}


def validate_app_args(import_path: str, args: dict[str, Any]) -> Any:
    """Parse ``args`` as the builder at ``import_path`` would; raises ``ConfigError`` on bad args."""
    parser = ARG_PARSERS.get(import_path)
    if parser is None:
        raise ConfigError(f"unknown import_path {import_path!r}; known: {', '.join(ARG_PARSERS)}")
    return parser(args)


def config_problems(raw: Any) -> list[str]:
    """Every problem of a whole serve config, one readable item each (empty: deployable)."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(raw, dict):
        return ["(root): expected a mapping with `applications`"]
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        return [format_validation_error(exc)]
    problems = []
    for index, app in enumerate(raw.get("applications") or []):
        name = app.get("name", f"applications.{index}")
        try:
            validate_app_args(app["import_path"], app.get("args") or {})
        except ValueError as exc:
            problems.append(f"app {name!r}: {exc}")
    return problems or _port_clashes(raw)


def engine_configs(raw: dict[str, Any]) -> list[EngineConfig]:
    """Every engine a (valid) serve config runs: engine apps' args and router apps' ``engines``."""
    found: list[EngineConfig] = []
    for app in raw.get("applications") or []:
        parsed = validate_app_args(app["import_path"], app.get("args") or {})
        found.extend([parsed] if isinstance(parsed, EngineConfig) else parsed.engines)
    return found


def builtin_models(raw: dict[str, Any]) -> list[str]:
    """Names of the ``builtin:`` models a (valid) serve config's engines load, in order, once each."""
    names = [engine.model[len(BUILTIN_PREFIX):] for engine in engine_configs(raw)
             if engine.model.startswith(BUILTIN_PREFIX)]
    return list(dict.fromkeys(names))


def listener_addresses(raw: dict[str, Any]) -> list[tuple[str, str, int]]:
    """``(app name, host, port)`` of every router app's own listener (``args.router.listen``)."""
    found = []
    for index, app in enumerate(raw.get("applications") or []):
        listen = (((app.get("args") or {}).get("router") or {}).get("listen")) or {}
        if listen.get("port"):
            found.append((app.get("name", f"applications.{index}"), listen.get("host", "127.0.0.1"), int(listen["port"])))
    return found


def serve_proxy_enabled(raw: dict[str, Any]) -> bool:
    """Whether the config asks for Serve's HTTP proxy (Serve's direct ingress starts it regardless)."""
    return raw.get("proxy_location", "EveryNode") != "Disabled"


def front_door(raw: dict[str, Any]) -> tuple[str, int]:
    """``(host, port)`` clients should call: the first router listener (the fast path), else Serve's
    HTTP proxy."""
    listeners = listener_addresses(raw)
    if listeners:
        return listeners[0][1], listeners[0][2]
    http = raw.get("http_options") or {}
    return http.get("host", "127.0.0.1"), int(http.get("port", 8000))


def _port_clashes(raw: dict[str, Any]) -> list[str]:
    """Listeners share ports with SO_REUSEPORT, so two router apps on one port would silently split
    its traffic between them; and Serve's own port is never free for a listener: even with
    ``proxy_location: Disabled``, Serve's direct ingress starts the proxy on it."""
    serve_port = int((raw.get("http_options") or {}).get("port", 8000))
    problems, owners = [], {}
    for name, _, port in listener_addresses(raw):
        if port == serve_port:
            problems.append(f"app {name!r}: router.listen.port {port} is Serve's http_options.port")
        elif port in owners:
            problems.append(f"app {name!r}: router.listen.port {port} is also app {owners[port]!r}'s listener")
        owners.setdefault(port, name)
    return problems
