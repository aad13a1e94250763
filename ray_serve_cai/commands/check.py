"""``ray-serve-cai check CONFIG``: validate a serve config offline, before `serve deploy` does."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml

# import_path of each app builder -> the pydantic parser it applies to its args.
ARG_PARSERS = {
    "serve_apps.apps:build_app": "serve_apps.apps:parse_engine_config",
    "serve_apps.router.app:build_router_app": "serve_apps.router.app:parse_router_args",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "check",
        help="validate a serve config file (Serve schema + every app's args) without deploying",
        description="Validate CONFIG against Serve's deploy schema and each application's args against "
        "this package's pydantic models. Prints one line per problem, naming the app and key; exit 1 "
        "if any.",
    )
    check.add_argument("config", type=Path, help="serve config YAML, e.g. serve_configs/prod.yaml")
    check.set_defaults(func=_check)


def validate_app_args(import_path: str, args: dict[str, Any]) -> Any:
    """Parse ``args`` as the builder at ``import_path`` would; raises ValueError on bad args."""
    target = ARG_PARSERS.get(import_path)
    if target is None:
        raise ValueError(f"unknown import_path {import_path!r}; known: {', '.join(ARG_PARSERS)}")
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(args)


def config_problems(raw: Any) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.config import format_validation_error

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


def listener_addresses(raw: dict[str, Any]) -> list[tuple[str, str, int]]:
    """``(app name, host, port)`` of every router app's own listener (``args.router.listen``)."""
    found = []
    for index, app in enumerate(raw.get("applications") or []):
        listen = (((app.get("args") or {}).get("router") or {}).get("listen")) or {}
        if listen.get("port"):
            found.append((app.get("name", f"applications.{index}"), listen.get("host", "127.0.0.1"), int(listen["port"])))
    return found


def _port_clashes(raw: dict[str, Any]) -> list[str]:
    """Listeners share ports with SO_REUSEPORT, so two router apps on one port would silently split
    its traffic between them; and Serve's own port is not free for a listener."""
    serve_port = int((raw.get("http_options") or {}).get("port", 8000))
    problems, owners = [], {}
    for name, _, port in listener_addresses(raw):
        if port == serve_port:
            problems.append(f"app {name!r}: router.listen.port {port} is Serve's http_options.port")
        elif port in owners:
            problems.append(f"app {name!r}: router.listen.port {port} is also app {owners[port]!r}'s listener")
        owners.setdefault(port, name)
    return problems


def _check(args: argparse.Namespace) -> int:
    from ray_serve_cai.cli import CLIError

    if not args.config.exists():
        raise CLIError(f"config file not found: {args.config}")
    try:
        raw = yaml.safe_load(args.config.read_text())
    except yaml.YAMLError as exc:
        raise CLIError(f"{args.config} is not valid YAML: {' '.join(str(exc).split())}") from None
    problems = config_problems(raw)
    if problems:
        raise CLIError(f"{args.config}: " + "; ".join(problems))
    print(f"{args.config}: ok ({len(raw.get('applications') or [])} application(s))")
    return 0
