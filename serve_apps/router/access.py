"""What a key may reach: the candidate routes its allow-lists leave, or the error OpenAI would give.

Apart from ``keys.py`` because it needs the routing vocabulary (``pool.Route``), which itself depends
on the config that ``keys.py`` is part of.
"""

from __future__ import annotations

from serve_apps.asgi import Reply
from serve_apps.openai_format import error_reply
from serve_apps.router.keys import ApiKey
from serve_apps.router.pool import Route


def allowed_routes(key: ApiKey, routes: list[Route], model: str | None, explicit: str | None) -> list[Route] | Reply:
    """The routes ``key`` may take, or the error OpenAI gives: an unknown-to-you model is 404
    ``model_not_found`` (as for a model the account has no access to), a backend it may not reach 403."""
    if key.models is not None:
        routes = [r for r in routes if model in key.models or r.model in key.models]
        if not routes:
            return error_reply(404, f"The model `{model}` does not exist or you do not have access to it "
                               f"(key {key.name!r} may use: {', '.join(sorted(key.models)) or 'no model'}).",
                               "invalid_request_error", "model_not_found")
    if key.backends is not None:
        if explicit is not None and explicit not in key.backends:
            return error_reply(403, f"key {key.name!r} may not use backend {explicit!r} "
                               f"(allowed: {', '.join(sorted(key.backends)) or 'none'})", "permission_error",
                               "backend_not_allowed")
        routes = [r for r in routes if r.state.name in key.backends]
        if not routes:
            return error_reply(403, f"key {key.name!r} may not use any backend serving model `{model}` "
                               f"(allowed: {', '.join(sorted(key.backends)) or 'none'})", "permission_error",
                               "backend_not_allowed")
    return routes


def unknown_key(name: str | None) -> Reply:
    """401 for a caller inside the app (a batch job, the Matrix bot) acting for a key this router does
    not have: removed from ``auth.keys`` since, or never named. Such a caller is refused, never let in
    as ``anonymous`` (which has no limits)."""
    if name is None:
        message = "This request acts for no key, and this router has auth keys: every caller must act for one."
    else:
        message = f"This request acts for key {name!r}, which is not (or no longer) in this router's auth keys."
    return error_reply(401, message, "invalid_request_error", "invalid_api_key")
