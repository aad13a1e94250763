"""Whose batch storage: the default belongs to one stack.

Two stacks of one user on one machine must not see (or delete) each other's files and batches, and a
stack stopped and started again with the same configuration must find its own (its unfinished jobs
resume from storage). So the default ``storage`` is a directory of its own per stack:
``~/.cache/ray-serve-cai/batch/<router app>@<host>-<port>``, the app's name and its front door (the
address clients call: the router's own listener, else Serve's HTTP proxy, as ``serve_apps.checks.
front_door`` says for ``ray-serve-cai up``). Two stacks running at once cannot share a front door; the
same configuration started again has the same one. A storage set in the config is used as it is.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from serve_apps.batch.config import DEFAULT_STORAGE, BatchConfig
from serve_apps.checks import front_door

logger = logging.getLogger("ray.serve")
_UNSAFE = re.compile(r"[^A-Za-z0-9@._-]+")


def stack_storage(app_name: str, door: tuple[str, int] | None) -> str:
    """The default storage of the router app ``app_name`` whose clients call ``door`` (host, port)."""
    key = app_name if door is None else f"{app_name}@{door[0]}-{door[1]}"
    return f"{DEFAULT_STORAGE}/{_UNSAFE.sub('_', key)}"


def serve_front_door(app_name: str) -> tuple[str, int] | None:
    """The front door of ``app_name`` as deployed on this Ray cluster (from Serve's controller: its
    HTTP options and the app's deployed config); None when Serve cannot say (the app was started with
    ``serve.run``, not a config)."""
    try:
        from ray.serve.context import _get_global_client

        details: dict[str, Any] = _get_global_client().get_serve_details()
        app = (details.get("applications") or {}).get(app_name) or {}
        deployed = app.get("deployed_app_config")
    except Exception:  # no controller reachable, or another Ray's layout: the app name alone
        logger.warning("batch: could not read the front door of %s from Serve", app_name, exc_info=True)
        return None
    if not deployed:
        return None
    return front_door({"applications": [deployed], "http_options": details.get("http_options") or {}})


def for_stack(config: BatchConfig, app_name: str) -> BatchConfig:
    """``config`` with the default storage made this stack's own (a configured storage is kept)."""
    if config.storage != DEFAULT_STORAGE:
        return config
    return config.model_copy(update={"storage": stack_storage(app_name, serve_front_door(app_name))})
