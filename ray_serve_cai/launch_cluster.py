"""The seeds' spelling, kept as an alias of ``ray-serve-cai cai start|status|stop``::

    python -m ray_serve_cai.launch_cluster --config x.yaml start-cai|status-cai|stop-cai
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from launchers.cai.cli import add_cluster_commands

    parser = argparse.ArgumentParser(prog="python -m ray_serve_cai.launch_cluster",
                                     description="Ray cluster on Cloudera AI applications (alias of "
                                     "`ray-serve-cai cai start|status|stop`).")
    parser.add_argument("--config", default=None, help="cluster config YAML")
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True
    add_cluster_commands(actions, names={"start": "start-cai", "status": "status-cai", "stop": "stop-cai"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ray_serve_cai.cli import CLIError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"launch_cluster: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("launch_cluster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
