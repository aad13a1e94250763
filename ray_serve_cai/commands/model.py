"""``ray-serve-cai model build``: build the built-in tiny model (no downloads needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="manage locally built models")
    actions = model.add_subparsers(dest="model_command", metavar="<action>")
    actions.required = True
    build = actions.add_parser(
        "build",
        help="build the tiny random-weight chat model into the cache",
        description="Build the deterministic tiny chat model (BPE tokenizer trained on local text, "
        "ChatML template, random-weight Llama). Prints the model directory on stdout.",
    )
    build.add_argument("--cache-dir", type=Path, default=None,
                       help="models cache (default: $RAY_SERVE_CAI_CACHE/models or ~/.cache/ray-serve-cai/models)")
    build.add_argument("--rebuild", action="store_true", help="rebuild even if a complete build exists")
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from serve_apps.models.tiny import ensure_tiny_model, fingerprint

    print("building tiny model (about 10 s)...", file=sys.stderr)
    path = ensure_tiny_model(args.cache_dir, rebuild=args.rebuild)
    print(f"sha256 of files: {fingerprint(path)}", file=sys.stderr)
    print(path)
    return 0
