"""The original spelling, kept as an alias of ``ray-serve-cai cai start|status|stop``::

    python -m ray_serve_cai.launch_cluster --config x.yaml start-cai|status-cai|stop-cai [options]

It only rewrites the arguments and hands them to the one CLI, so both spellings share parsing,
error handling and exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

ACTIONS = {"start-cai": "start", "status-cai": "status", "stop-cai": "stop"}


def translate(argv: Sequence[str]) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m ray_serve_cai.launch_cluster",
        description="Ray cluster on Cloudera AI applications; alias of `ray-serve-cai cai start|status|stop` "
        "(options after the action are passed on, e.g. start-cai --serve-config serve.yaml).")
    parser.add_argument("--config", default=None, help="cluster config YAML")
    parser.add_argument("action", choices=list(ACTIONS))
    args, rest = parser.parse_known_args(list(argv))
    config = ["--config", args.config] if args.config else []
    return ["cai", ACTIONS[args.action], *config, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    from ray_serve_cai.cli import main as cli_main

    return cli_main(translate(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
