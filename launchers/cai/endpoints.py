"""Where a deployed serve config answers on a CML cluster: the front door(s), their ``/metrics``, and
Serve's HTTP proxy -- what ``ray-serve-cai up`` prints next to ``ready:``, as data for ``ClusterInfo``.

The config is parsed with the models that validate it everywhere else: Serve's own ``ServeDeploySchema``
(``http_options``, ``proxy_location``, with Serve's real defaults) and, for apps this package builds, the
same arg parsers ``ray-serve-cai check`` applies (``serve_apps.checks.validate_app_args``). Apps of other
modules (the user's own code) are deployed as they are and have no front door here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from launchers.cai.config import read_yaml
from launchers.cai.errors import CAIError
from serve_apps.validation import format_validation_error

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})


class FrontDoor(BaseModel):
    """A router app's own listener (``router.listen``): the fast path clients should call."""

    app: str
    url: str  # the OpenAI base URL, as `up` prints after `ready:`
    metrics_url: str  # the router's Prometheus series (needs an API key when the router has keys)
    ready_url: str  # 200 only while every configured model has a backend that can generate
    ready: bool | None = None  # what ready_url answered (``cai status``); None: not asked or no answer


class ServeEndpoints(BaseModel):
    config: str
    front_doors: list[FrontDoor] = []
    serve_proxy_url: str | None = None  # Serve's HTTP proxy (apps under their route_prefix), if enabled


def _url(host: str, port: int, head_ip: str) -> str:
    """A listener on all interfaces is reached at the head's address (the node the launcher knows)."""
    host = head_ip if host in ALL_INTERFACES else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def load_serve_config(path: str | Path) -> ServeDeploySchema:
    """The config as Serve validates it, for ``serve_endpoints``; a ``CAIError`` names what is wrong."""
    from ray.serve.schema import ServeDeploySchema

    raw = read_yaml(path, "serve config")
    try:
        return ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise CAIError(f"serve config {path}: {format_validation_error(exc)}") from None


class Addresses(BaseModel):
    """Listen addresses as the config writes them (``0.0.0.0`` included), before the head is known."""

    front_doors: list[tuple[str, str, int]] = []  # (app, host, port) of each router listener
    serve_proxy: tuple[str, int] | None = None


def serve_addresses(path: str | Path) -> Addresses:
    """Parse and validate the config at ``path``; raise ``CAIError`` before anything is started."""
    # the serve apps' parsers only here: the CLI path stays light (test_launchers_stay_light_and_apart)
    from serve_apps.checks import ARG_PARSERS, ConfigError, validate_app_args
    from serve_apps.router.config import RouterAppArgs

    schema = load_serve_config(path)
    doors = []
    for app in schema.applications:
        if app.import_path not in ARG_PARSERS:
            continue
        try:
            args = validate_app_args(app.import_path, app.args or {})
        except ConfigError as exc:
            raise CAIError(f"serve config {path}: app {app.name!r}: {exc}") from None
        if isinstance(args, RouterAppArgs) and args.router.listen is not None:
            doors.append((app.name, args.router.listen.host, args.router.listen.port))
    enabled = schema.proxy_location.value != "Disabled"
    return Addresses(front_doors=doors,
                     serve_proxy=(schema.http_options.host, schema.http_options.port) if enabled else None)


def serve_endpoints(path: str | Path, head_ip: str) -> ServeEndpoints:
    """Front doors (router listeners), their metrics, and Serve's proxy of the config at ``path``."""
    found = serve_addresses(path)
    doors = []
    for app, host, port in found.front_doors:
        base = _url(host, port, head_ip)
        doors.append(FrontDoor(app=app, url=f"{base}/v1", metrics_url=f"{base}/metrics", ready_url=f"{base}/ready"))
    proxy = _url(*found.serve_proxy, head_ip) if found.serve_proxy else None
    return ServeEndpoints(config=str(path), front_doors=doors, serve_proxy_url=proxy)


def probe_readiness(endpoints: ServeEndpoints, timeout_s: float = 3.0) -> ServeEndpoints:
    """``endpoints`` with each front door's ``ready`` as its ``GET /ready`` answers now (the router's
    readiness, as the k8s readiness probe reads it); a door that does not answer is ``None``."""
    import httpx

    doors = []
    for door in endpoints.front_doors:
        try:
            ready: bool | None = httpx.get(door.ready_url, timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            ready = None
        doors.append(door.model_copy(update={"ready": ready}))
    return endpoints.model_copy(update={"front_doors": doors})
