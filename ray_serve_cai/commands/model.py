"""``ray-serve-cai model build|list``: the built-in models (``builtin:NAME`` in a config)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_BUILTIN = "tiny-chat"  # kept for scripts written before there was a choice


def register(subparsers: argparse._SubParsersAction) -> None:
    from serve_apps.models import BUILTIN_MODELS  # cheap: torch and transformers load only to build

    known = "\n".join(f"  {m.name:24} {m.summary}" for m in BUILTIN_MODELS.values())
    model = subparsers.add_parser("model", help="build and list the built-in models")
    actions = model.add_subparsers(dest="model_command", metavar="<action>")
    actions.required = True
    cache_help = "models cache (default: $RAY_SERVE_CAI_CACHE/models or ~/.cache/ray-serve-cai/models)"
    build = actions.add_parser(
        "build",
        help="build a built-in model into the cache",
        description="Build a built-in model into the cache, unless a current build is there.\nPrints the "
        "model directory on stdout; progress and the build's provenance go to stderr.",
        epilog=f"built-in models (use as `model: builtin:NAME` in a serve config):\n{known}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("name", nargs="?", default=DEFAULT_BUILTIN, metavar="NAME",
                       help=f"which built-in model (default: {DEFAULT_BUILTIN})")
    build.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    build.add_argument("--rebuild", action="store_true", help="rebuild even if a complete build exists")
    build.set_defaults(func=_build)
    listing = actions.add_parser(
        "list",
        help="list the built-in models and whether each is built",
        description="One line per built-in model: name, built or not, directory, what it is.",
    )
    listing.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    listing.set_defaults(func=_list)


def _build(args: argparse.Namespace) -> int:
    from ray_serve_cai.cli import CLIError
    from serve_apps.models import ModelBuildError, UnknownBuiltinModel, get_builtin

    try:
        builtin = get_builtin(args.name)
    except UnknownBuiltinModel as exc:
        raise CLIError(str(exc), code=2) from None
    if args.rebuild or not builtin.is_built(builtin.path(args.cache_dir)):
        print(f"building {builtin.name} ({builtin.summary})...", file=sys.stderr, flush=True)
    try:
        path = builtin.ensure(args.cache_dir, rebuild=args.rebuild)
    except ModelBuildError as exc:
        raise CLIError(str(exc)) from None
    record = path / "ray_serve_cai_recipe.json"
    if record.exists():
        print(f"provenance: {json.dumps(json.loads(record.read_text()), sort_keys=True)}", file=sys.stderr)
    if builtin.name == "tiny-chat":
        from serve_apps.models.tiny import fingerprint

        print(f"sha256 of files: {fingerprint(path)}", file=sys.stderr)
    print(path)
    return 0


def _list(args: argparse.Namespace) -> int:
    from serve_apps.models import BUILTIN_MODELS

    for builtin in BUILTIN_MODELS.values():
        path = builtin.path(args.cache_dir)
        state = "built" if builtin.is_built(path) else "not built"
        print(f"{builtin.name}\t{state}\t{path}\t{builtin.summary}")
    return 0
