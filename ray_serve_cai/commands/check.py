"""``ray-serve-cai check CONFIG``: validate a serve config offline, before `serve deploy` does."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


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


def _check(args: argparse.Namespace) -> int:
    from ray_serve_cai.cli import CLIError

    if not args.config.exists():
        raise CLIError(f"config file not found: {args.config}")
    try:
        raw = yaml.safe_load(args.config.read_text())
    except yaml.YAMLError as exc:
        raise CLIError(f"{args.config} is not valid YAML: {' '.join(str(exc).split())}") from None
    from serve_apps.checks import config_problems

    problems = config_problems(raw)
    if problems:
        raise CLIError(f"{args.config}: " + "; ".join(problems))
    print(f"{args.config}: ok ({len(raw.get('applications') or [])} application(s))")
    return 0
