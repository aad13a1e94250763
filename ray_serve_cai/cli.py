"""The one command-line entry point: ``ray-serve-cai <command> ...``.

Each command group lives in its own module exposing ``register(subparsers)``; this module only wires
them together and turns expected failures into one readable line and a non-zero exit: ``CLIError``
from the face's own commands, and the launchers' own errors (mapped to exit codes here, so the
launchers never import this package).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands. Imported lazily so `--help` stays fast and a missing optional
# dependency of one group never breaks the others.
COMMAND_MODULES: tuple[str, ...] = (
    "ray_serve_cai.commands.model",
    "ray_serve_cai.commands.local",
    "ray_serve_cai.commands.check",
    "ray_serve_cai.commands.batch",
    "ray_serve_cai.commands.bench",
    "launchers.cai.cli",
    "launchers.kuberay.cli",
)


class CLIError(Exception):
    """An expected failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-serve-cai",
        description="Serve LLMs on Ray: vLLM engine replicas, a multi-backend OpenAI router, "
        "and launchers for Cloudera AI (CML) and KubeRay.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an optional part that is not installed
            if not module_name.startswith(exc.name or "\0"):
                raise
            continue
        module.register(subparsers)
    return parser


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure, None for a bug (which keeps its traceback)."""
    if isinstance(exc, CLIError):
        return exc.code
    from launchers.cai.errors import CAIError, ClusterNotRunning  # a small module, no dependencies

    if isinstance(exc, ClusterNotRunning):
        return 3
    if isinstance(exc, CAIError):
        return 1
    from launchers.kuberay.errors import KubeRayError, NotReady

    if isinstance(exc, NotReady):
        return 3
    if isinstance(exc, KubeRayError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"ray-serve-cai: error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("ray-serve-cai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the imported module so CLIError raised by command modules is the same class.
    from ray_serve_cai.cli import main as _main

    sys.exit(_main())
