"""Map a serve config's import_path to the pydantic validation its builder applies."""

from __future__ import annotations

import importlib
from typing import Any

# import_path -> "module:function" that validates the args (raising on bad ones)
VALIDATORS = {
    "serve_apps.apps:build_app": "serve_apps.apps:parse_engine_config",
    "serve_apps.router.app:build_router_app": "serve_apps.router.app:parse_router_args",
}


def validate_app_args(import_path: str, args: dict[str, Any]) -> Any:
    target = VALIDATORS.get(import_path)
    assert target, f"no validator known for {import_path}; add it to tests/serve_apps/app_args.py"
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(args)
