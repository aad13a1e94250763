"""``ray-serve-cai cai ...``: Ray clusters on CML applications and the CML jobs pipeline.

Progress goes to stderr, results (JSON status, project id) to stdout; an expected failure is one
line and a non-zero exit: commands raise ``CAIError``, and ``ray-serve-cai``'s entry point turns it into
an exit code (so this module never imports the package above it).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _manager(args: argparse.Namespace) -> Any:
    from launchers.cai.cluster import CAIClusterManager
    from launchers.cai.config import load_config

    config = args.config or os.environ.get("RAY_CLUSTER_CONFIG")
    return CAIClusterManager(load_config(config), progress=_progress)


def cmd_start(args: argparse.Namespace) -> int:
    info = _manager(args).start_cluster(info_file=args.info_file, serve_config=args.serve_config)
    print(info.model_dump_json(indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _manager(args).status(serve_config=args.serve_config)
    print(status.model_dump_json(indent=2))
    if args.check and not status.running:
        from launchers.cai.errors import ClusterNotRunning

        raise ClusterNotRunning(f"Ray cluster '{status.cluster_name}' is not running")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    deleted = _manager(args).stop_cluster()
    _progress(f"Stopped and deleted {len(deleted)} application(s)")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from launchers.cai.client import CMLClient
    from launchers.cai.errors import CAIError

    host = args.host or os.environ.get("CML_HOST")
    key = os.environ.get("CML_API_KEY") or os.environ.get("CDSW_APIV2_KEY")
    if not host:
        raise CAIError("no CML host: pass --host or set CML_HOST")
    if not key:
        raise CAIError(f"no CML API key for {host}: set CML_API_KEY")
    return CMLClient(host, key)


def _project_id(args: argparse.Namespace) -> str:
    from launchers.cai.errors import CAIError

    project_id = args.project_id or os.environ.get("CML_PROJECT_ID")
    if not project_id:
        raise CAIError("no project: pass --project-id or set CML_PROJECT_ID")
    return project_id


def _waiting(args: argparse.Namespace) -> Any:
    from launchers.cai.pipeline.jobs import Waiting

    return Waiting(poll_s=args.poll_interval)


def _git_url(args: argparse.Namespace) -> str | None:
    if args.git_url:
        return args.git_url
    repo = os.environ.get("GITHUB_REPOSITORY")
    if not repo:
        return None
    token = os.environ.get("GH_PAT")
    auth = f"x-access-token:{token}@" if token else ""
    return f"https://{auth}github.com/{repo}.git"


def _project_name(args: argparse.Namespace) -> str:
    from launchers.cai.errors import CAIError

    name = args.name or os.environ.get("CML_PROJECT_NAME")
    if not name and os.environ.get("GITHUB_REPOSITORY"):
        name = os.environ["GITHUB_REPOSITORY"].rsplit("/", 1)[-1]
    if not name:
        raise CAIError("no project name: pass --name or set CML_PROJECT_NAME")
    return name


def cmd_setup_project(args: argparse.Namespace) -> int:
    from launchers.cai.pipeline import setup_project

    with _client(args) as client:
        project = setup_project(client, _project_name(args), _git_url(args), progress=_progress,
                                timeout_s=args.timeout, output_file=args.output_file, poll_s=args.poll_interval)
    print(project.id)
    return 0


def cmd_create_jobs(args: argparse.Namespace) -> int:
    from launchers.cai.pipeline import create_jobs, load_jobs_config

    with _client(args) as client:
        ids = create_jobs(client, _project_id(args), load_jobs_config(args.jobs_config), progress=_progress)
    for key, job_id in ids.items():
        print(f"{key}={job_id}")
    return 0


def _force(args: argparse.Namespace) -> bool:
    return bool(args.force) or os.environ.get("FORCE_REBUILD", "").strip().lower() == "true"


def cmd_trigger_jobs(args: argparse.Namespace) -> int:
    from launchers.cai.pipeline import load_jobs_config, trigger_jobs

    with _client(args) as client:
        trigger_jobs(client, _project_id(args), load_jobs_config(args.jobs_config), force=_force(args),
                     progress=_progress, waiting=_waiting(args))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """deploy_to_cml: setup-project, create-jobs and trigger-jobs in one go."""
    from launchers.cai.pipeline import deploy_to_cml, load_jobs_config

    config = load_jobs_config(args.jobs_config)  # validate before touching CML
    with _client(args) as client:
        project, _ = deploy_to_cml(client, _project_name(args), _git_url(args), config, progress=_progress,
                                   force=_force(args), waiting=_waiting(args), clone_timeout_s=args.timeout,
                                   output_file=args.output_file)
    print(project.id)
    return 0


def add_cluster_commands(actions: Any) -> None:
    """start/status/stop (the older ``launch_cluster ... start-cai`` alias maps onto these)."""
    start = actions.add_parser("start", help="start (or find) the Ray cluster; wait until ready")
    start.add_argument("--serve-config", default=None, help="serve config to `serve deploy` once the cluster is up")
    start.add_argument("--info-file", default="ray_cluster_info.json", help="where to write the cluster info")
    start.set_defaults(func=cmd_start)
    status = actions.add_parser("status", help="show the cluster's applications and address")
    status.add_argument("--check", action="store_true", help="exit 3 unless every node is up")
    status.add_argument("--serve-config", default=None,
                        help="serve config deployed on the cluster: show its front door, metrics and proxy URLs")
    status.set_defaults(func=cmd_status)
    stop = actions.add_parser("stop", help="stop and delete every application of the cluster")
    stop.set_defaults(func=cmd_stop)
    for parser in (start, status, stop):
        parser.add_argument("--config", default=None,
                            help="cluster config YAML (default: $RAY_CLUSTER_CONFIG; env-only config if unset)")


def register(subparsers: Any) -> None:
    cai = subparsers.add_parser("cai", help="Ray clusters on Cloudera AI (CML) and the CML jobs pipeline",
                                description="Ray clusters on CML applications and the CML jobs pipeline. "
                                "Needs CML_API_KEY (never printed).")
    actions = cai.add_subparsers(dest="cai_command", metavar="<action>")
    actions.required = True
    add_cluster_commands(actions)

    setup = actions.add_parser("setup-project", help="find the project by name or create it from git")
    setup.add_argument("--name", default=None, help="project name (default: $CML_PROJECT_NAME or repo name)")
    setup.add_argument("--git-url", default=None, help="git URL (default: GitHub $GITHUB_REPOSITORY, $GH_PAT)")
    setup.add_argument("--output-file", default="/tmp/project_id.txt", help="where to write the project id")
    setup.add_argument("--timeout", type=float, default=900, help="seconds to wait for the git clone")
    setup.set_defaults(func=cmd_setup_project)

    create = actions.add_parser("create-jobs", help="create or update the CML jobs from jobs_config.yaml")
    create.set_defaults(func=cmd_create_jobs)
    trigger = actions.add_parser("trigger-jobs", help="run the jobs in order; skip ones that already succeeded")
    trigger.add_argument("--force", action="store_true", help="rerun everything (also FORCE_REBUILD=true)")
    trigger.set_defaults(func=cmd_trigger_jobs)
    deploy = actions.add_parser("deploy", help="setup-project + create-jobs + trigger-jobs (deploy_to_cml)")
    deploy.add_argument("--name", default=None)
    deploy.add_argument("--git-url", default=None)
    deploy.add_argument("--output-file", default=None)
    deploy.add_argument("--timeout", type=float, default=900)
    deploy.add_argument("--force", action="store_true")
    deploy.set_defaults(func=cmd_deploy)
    for parser in (setup, create, trigger, deploy):
        parser.add_argument("--host", default=None, help="CML URL (default: $CML_HOST)")
        parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between API polls")
    for parser in (create, trigger, deploy):
        parser.add_argument("--jobs-config", default=None, help="jobs YAML (default: launchers/cai/jobs_config.yaml)")
    for parser in (create, trigger):
        parser.add_argument("--project-id", default=None, help="CML project id (default: $CML_PROJECT_ID)")
