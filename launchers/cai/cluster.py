"""``CAIClusterManager``: a Ray cluster whose nodes are CML applications.

A CML application has no address in the API, so the head's launcher publishes its real
``CDSW_IP_ADDRESS:port`` in the project filesystem and workers wait for it (see nodes.py and
scripts/ray_node.py). The manager only talks to the API: it creates the applications, reads the
published files back through the files API, and stops *and deletes* every application it owns.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from launchers.cai import nodes
from launchers.cai.client import CMLClient
from launchers.cai.config import ClusterConfig, load_config
from launchers.cai.endpoints import ServeEndpoints, probe_readiness, serve_addresses, serve_endpoints
from launchers.cai.errors import CAIError, CAITimeoutError, CMLNotFoundError
from launchers.cai.models import APP_FAILED, APP_RUNNING, APP_STARTING, APP_STOPPED, Application
from launchers.cai.runtimes import choose_runtime
from launchers.polling import PollTimeout, poll_until

ALIVE = frozenset({APP_STARTING, APP_RUNNING})


class NodeState(BaseModel):
    node: str
    app_id: str
    name: str
    status: str
    ready: bool = False


class ClusterStatus(BaseModel):
    cluster_name: str
    project_id: str
    running: bool
    head_address: str | None = None
    dashboard_url: str | None = None
    nodes: list[NodeState] = []
    serve: ServeEndpoints | None = None  # where the deployed serve config answers (endpoints.py)


class ClusterInfo(ClusterStatus):
    """What ``ray_cluster_info.json`` holds (never the API key)."""

    host: str
    reused: bool = False
    started_at: str
    head_resources: dict[str, float]
    worker_resources: dict[str, float]


def _locations(status: ClusterStatus) -> list[str]:
    """What ``ray-serve-cai up`` prints next to ``ready:``, in its words: front door, metrics, dashboard."""
    lines = []
    if status.serve is not None:
        for door in status.serve.front_doors:
            lines += [f"front door: {door.url}  (app {door.app}; the rollout: serve status --address "
                      f"{status.dashboard_url})", f"  metrics:   {door.metrics_url} (the router's series)",
                      f"  readiness: {door.ready_url} (200 once every model can generate; `cai status` asks it)"]
        if status.serve.serve_proxy_url:
            lines.append(f"  also Serve's HTTP proxy (slower, one more hop): {status.serve.serve_proxy_url}")
    if status.dashboard_url:
        lines.append(f"  dashboard: {status.dashboard_url}")
    return lines


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class CAIClusterManager:
    """Start, inspect and stop one named Ray cluster in one CML project."""

    def __init__(self, config: ClusterConfig, *, client: CMLClient | None = None,
                 progress: Callable[[str], None] = _stderr) -> None:
        self.config = config
        self.client = client or CMLClient(config.cai.host, config.api_key(), timeout=config.cai.request_timeout_s)
        self.progress = progress
        self.project_id = config.cai.project_id
        self._runtime: str | None = None
        self._nonces: set[str] = set()  # of the applications this manager asked CML to create

    @classmethod
    def from_file(cls, path: str | Path | None, **kwargs: object) -> CAIClusterManager:
        return cls(load_config(path), **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"CAIClusterManager(host={self.config.cai.host!r}, cluster={self.config.cai.cluster_name!r})"

    # -- public API -------------------------------------------------------------------------------
    def start_cluster(self, *, info_file: str | Path | None = None, serve_config: str | None = None) -> ClusterInfo:
        """Bring the cluster to the configured shape and wait until every node joined.

        Idempotent: a running head is reused and only missing or dead workers are (re)created.
        If anything fails, the applications created by *this* call are stopped and deleted, also one
        whose create answered with an error although CML made it (found by its nonce).
        """
        cfg, created = self.config, []
        serve_path = serve_config or cfg.serve.config
        if serve_path:
            serve_addresses(serve_path)  # a config that cannot deploy fails before anything starts
        self._nonces.clear()
        self.progress(f"Starting Ray cluster '{cfg.cai.cluster_name}' on {cfg.cai.host} "
                      f"(project {self.project_id})")
        self.progress(f"   head: {cfg.head_cpu:g} CPU, {cfg.head_memory:g} GiB, 0 GPU; workers: "
                      f"{cfg.cai.num_workers} x {cfg.cai.resources.cpu:g} CPU, {cfg.cai.resources.memory:g} GiB, "
                      f"{cfg.cai.resources.num_gpus} GPU")
        try:
            apps, reused = self._reconcile(created)
            head_info = self._wait_ready(apps)
        except BaseException:  # includes Ctrl-C: never leave half a cluster behind
            self._cleanup(created)
            raise
        info = self._info(apps, head_info, reused=reused)
        self.progress(f"Ray cluster ready: head {info.head_address}, {len(apps)} node(s)"
                      + (" (found running)" if reused and not created else ""))
        self._write_info(info, info_file)
        if serve_path:
            from launchers.cai.serve import serve_deploy

            serve_deploy(serve_path, info.dashboard_url, progress=self.progress)
            info.serve = serve_endpoints(serve_path, head_info["ip"])
            for line in _locations(info):
                self.progress(f"   {line}")
            self._write_info(info, info_file)
        return info

    def _write_info(self, info: ClusterInfo, info_file: str | Path | None) -> None:
        if info_file is not None:
            Path(info_file).write_text(info.model_dump_json(indent=2) + "\n")
            self.progress(f"   cluster info written to {info_file}")

    def status(self, serve_config: str | None = None) -> ClusterStatus:
        """The cluster's applications and addresses; with a serve config (``serve_config`` or the
        config's ``serve.config``), where it answers once deployed."""
        owned = self._owned()
        states, head_address, dashboard, head_ip = [], None, None, None
        for spec in nodes.desired_specs(self.config):
            app = owned.get(spec.name)
            if app is None:
                continue
            published = self._published(spec, app) if app.status == APP_RUNNING else None
            states.append(NodeState(node=spec.node, app_id=app.id, name=app.name, status=app.status,
                                    ready=published is not None))
            if spec.role == "head" and published:
                head_address, dashboard, head_ip = published["address"], self._dashboard(published), published["ip"]
        running = len(states) == self.config.cai.num_workers + 1 and all(s.ready for s in states)
        serve_path = serve_config or self.config.serve.config
        return ClusterStatus(cluster_name=self.config.cai.cluster_name, project_id=self.project_id,
                             running=running, head_address=head_address, dashboard_url=dashboard, nodes=states,
                             serve=probe_readiness(serve_endpoints(serve_path, head_ip)) if serve_path and head_ip
                             else None)

    def stop_cluster(self, timeout_s: float = 300) -> list[str]:
        """Stop and delete every application of this cluster, workers first. Returns their ids.

        One application that cannot be removed does not keep the others running: all are tried,
        then a ``CAIError`` names those that failed."""
        owned = sorted(self._owned().values(), key=lambda a: a.name.endswith("-head"))
        if not owned:
            self.progress(f"No applications of cluster '{self.config.cai.cluster_name}' found")
        failed = []
        for app in owned:
            try:
                self._remove(app, "stop", timeout_s=timeout_s)
            except CAIError as exc:
                self.progress(f"   could not remove {app.name} ({app.id}): {exc}")
                failed.append(f"{app.name} ({app.id}): {exc}")
        if failed:
            removed = len(owned) - len(failed)
            raise CAIError(f"stopped {removed} of {len(owned)} application(s) of cluster "
                           f"'{self.config.cai.cluster_name}'; still there: {'; '.join(failed)}")
        return [a.id for a in owned]

    # -- steps ------------------------------------------------------------------------------------
    def _reconcile(self, created: list[Application]) -> tuple[dict[str, Application], bool]:
        """Make the owned applications match the config. A live head is kept (with its token, so
        workers still find it); without one, everything of the cluster is replaced."""
        head_spec = nodes.head_spec(self.config)
        script = self._upload_launcher()
        owned = self._owned()
        head = owned.pop(head_spec.name, None)
        reused = head is not None and head.status in ALIVE
        if not reused:
            for app in ([head] if head else []) + list(owned.values()):
                self._remove(app, "stale")
            owned = {}
            head = self._create(head_spec, script, token=None, created=created)
        assert head is not None
        token = head.environment.get("RAY_CAI_TOKEN", "")
        apps = {head_spec.name: head}
        for spec in nodes.desired_specs(self.config)[1:]:
            app = owned.pop(spec.name, None)
            if app is not None and app.status not in ALIVE:
                self._remove(app, f"not running ({app.status})")
                app = None
            apps[spec.name] = app or self._create(spec, script, token=token, created=created)
        for extra in owned.values():  # scaled down since the last start
            self._remove(extra, "beyond num_workers")
        return apps, reused

    def _owned(self) -> dict[str, Application]:
        pattern = nodes.owned_name_re(self.config)
        apps = self.client.list_applications(self.project_id)
        return {a.name: a for a in apps if pattern.match(a.name)}

    def _upload_launcher(self) -> str:
        path, content = nodes.launcher_script()
        if not self.client.file_exists(self.project_id, path):
            self.client.upload_file(self.project_id, path, content)
            self.progress(f"   uploaded launcher script {path}")
        return path

    def _runtime_identifier(self) -> str:
        if self._runtime is None:
            cai = self.config.cai
            self._runtime = choose_runtime(self.client, cai.runtime, cai.runtime_identifier)
            self.progress(f"   runtime: {self._runtime}")
        return self._runtime

    def _create(self, spec: nodes.NodeSpec, script: str, *, token: str | None, created: list) -> Application:
        runtime = self._runtime_identifier()
        nonce = uuid.uuid4().hex
        env = nodes.node_environment(self.config, spec, nonce=nonce, token=token or nonce)
        fields = dict(name=spec.name, subdomain=spec.name, script=script, cpu=spec.cpu, memory=spec.memory,
                      nvidia_gpu=spec.gpus, environment=env, bypass_authentication=False,
                      runtime_identifier=runtime, kernel=self.config.cai.kernel,
                      description=f"Ray {spec.node} of cluster {self.config.cai.cluster_name} (ray-serve-cai)")
        self._nonces.add(nonce)
        app = self.client.create_application(self.project_id, **fields)  # adopts its own late landing
        created.append(app)
        self.progress(f"   created {spec.node} application {app.name} ({app.id})")
        return app

    def _cleanup(self, created: list[Application]) -> None:
        """Remove what this start created: the applications it got back, and any of its nonces
        whose create failed on the way back (CML made it, the answer was lost)."""
        doomed = {a.id: a for a in created}
        try:
            doomed |= {a.id: a for a in self._owned().values() if a.environment.get("RAY_CAI_NONCE") in self._nonces}
        except CAIError as exc:
            self.progress(f"   could not list the cluster's applications to clean up: {exc}")
        if doomed:
            self.progress(f"Start failed: removing the {len(doomed)} application(s) it created")
        for app in doomed.values():
            self._remove(app, "cleanup", quiet=True)

    def _remove(self, app: Application, why: str, *, timeout_s: float = 120, quiet: bool = False) -> None:
        try:
            if app.status not in (APP_STOPPED, APP_FAILED):
                self.client.stop_application(self.project_id, app.id)
                self._wait(lambda: self.client.get_application(self.project_id, app.id).status
                           in (APP_STOPPED, APP_FAILED), timeout_s, f"application {app.name} to stop")
            self.client.delete_application(self.project_id, app.id)
            self.progress(f"   stopped and deleted {app.name} ({app.id}): {why}")
        except CMLNotFoundError:
            pass
        except CAIError as exc:
            if not quiet:
                raise
            self.progress(f"   could not remove {app.name} ({app.id}): {exc}")

    def _published(self, spec: nodes.NodeSpec, app: Application) -> dict | None:
        """The node's readiness record, if it was written by *this* application (nonce match)."""
        try:
            raw = self.client.download_file(self.project_id, nodes.published_path(self.config, spec))
        except CMLNotFoundError:
            return None
        data = nodes.parse_published(raw)
        if data and data.get("nonce") == app.environment.get("RAY_CAI_NONCE"):
            return data
        return None

    def _wait_ready(self, apps: dict[str, Application]) -> dict:
        specs = {s.name: s for s in nodes.desired_specs(self.config)}
        ready: dict[str, dict] = {}

        def all_ready() -> bool:
            for name, app in apps.items():
                if name in ready:
                    continue
                app = apps[name] = self.client.get_application(self.project_id, app.id)
                if app.status not in ALIVE:
                    raise CAIError(f"application {app.name} ({app.id}) is {app.status}; see its logs in CML")
                if app.status == APP_RUNNING and (published := self._published(specs[name], app)):
                    ready[name] = published
            return len(ready) == len(apps)

        def status(elapsed: float) -> str:
            line = ", ".join(f"{specs[n].node}: {'ready' if n in ready else a.status}" for n, a in apps.items())
            return f"   [{elapsed:4.0f}s] {line}"

        try:
            poll_until(all_ready, self.config.cai.start_timeout_s, self.config.cai.poll_interval_s,
                       status=status, progress=self.progress)
        except PollTimeout as exc:
            missing = ", ".join(specs[n].node for n in apps if n not in ready)
            raise CAITimeoutError(f"Ray cluster not ready after {exc.elapsed:.0f}s; waiting for: {missing}") from None
        return ready[nodes.head_spec(self.config).name]

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            poll_until(done, timeout_s, min(self.config.cai.poll_interval_s, 2.0))
        except PollTimeout:
            raise CAITimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}") from None

    def _dashboard(self, head: dict) -> str | None:
        if not self.config.ray.include_dashboard:
            return None
        return f"http://{head['ip']}:{head.get('dashboard_port', self.config.ray.dashboard_port)}"

    def _info(self, apps: dict[str, Application], head: dict, *, reused: bool) -> ClusterInfo:
        cfg = self.config
        states = [NodeState(node=s.node, app_id=apps[s.name].id, name=s.name, status=apps[s.name].status, ready=True)
                  for s in nodes.desired_specs(cfg)]
        return ClusterInfo(
            cluster_name=cfg.cai.cluster_name, project_id=self.project_id, host=cfg.cai.host, running=True,
            head_address=head["address"], dashboard_url=self._dashboard(head), nodes=states, reused=reused,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            head_resources={"cpu": cfg.head_cpu, "memory_gib": cfg.head_memory, "gpus": 0},
            worker_resources={"cpu": cfg.cai.resources.cpu, "memory_gib": cfg.cai.resources.memory,
                              "gpus": cfg.cai.resources.num_gpus},
        )
