"""``ray-serve-cai k8s render|apply|status|delete --env ENV``: the KubeRay manifests in ``k8s/``.

Progress goes to stderr, results (manifests, JSON status) to stdout; an expected failure is one line
and a non-zero exit: commands raise ``KubeRayError``, and ``ray-serve-cai``'s entry point turns it into
an exit code (so this module never imports the package above it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ENV_HELP = "environment: dev, staging or prod (see k8s/environments.yaml)"
CLUSTER_HELP = ("the cluster the environment belongs to, e.g. kcl1 (environment kcl1-ENV); default: the GPU "
                "cluster environments dev/staging/prod")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _setup(args: argparse.Namespace, render: bool = True) -> tuple[Any, Any]:
    from launchers.kuberay.environments import Layout
    from launchers.kuberay.kubectl import Kubectl
    from launchers.kuberay.render import render as render_env

    layout = Layout(args.k8s_dir)
    args.env = layout.resolve(args.env, args.cluster)
    kubectl = Kubectl(context=getattr(args, "context", None), binary=args.kubectl)
    return kubectl, render_env(layout, kubectl, args.env, warn=_progress)


def cmd_render(args: argparse.Namespace) -> int:
    _, rendered = _setup(args)
    text = rendered.text()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        _progress(f"wrote {len(rendered.documents)} objects of environment {args.env} to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from launchers.kuberay.deploy import apply
    from launchers.kuberay.environments import Layout

    kubectl, rendered = _setup(args)
    timeout = args.timeout or Layout(args.k8s_dir).environment(args.env).ready_timeout_s
    status = apply(kubectl, rendered, wait=not args.no_wait, timeout_s=timeout, poll_s=args.poll_interval,
                   progress=_progress)
    if status is not None:
        print(status.model_dump_json(indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from launchers.kuberay.errors import NotReady
    from launchers.kuberay.status import service_status

    kubectl, rendered = _setup(args)
    kubectl.check_context()
    status = service_status(kubectl, rendered.namespace)
    _progress(status.line())
    print(status.model_dump_json(indent=2))
    if args.check and not status.ready:
        raise NotReady(f"rayservice {rendered.namespace}/{status.rayservice} is not ready")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from launchers.kuberay.deploy import delete

    kubectl, rendered = _setup(args)
    delete(kubectl, rendered, progress=_progress)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    k8s = subparsers.add_parser(
        "k8s", help="Ray Serve on Kubernetes with KubeRay: render/apply/status/delete k8s/ overlays",
        description="Deploy the same serve config as local and CML runs to Kubernetes with KubeRay 1.7 "
        "(RayService ray.io/v1). Wraps kubectl (kustomize built in): your kubeconfig and contexts apply. "
        "See docs/kuberay.md.",
    )
    sub = k8s.add_subparsers(dest="k8s_command", metavar="<k8s command>")
    sub.required = True

    def common(parser: argparse.ArgumentParser, cluster: bool = True) -> None:
        parser.add_argument("--env", required=True, help=ENV_HELP)
        parser.add_argument("--cluster", default=None, help=CLUSTER_HELP)
        if cluster:
            parser.add_argument("--context", help="kubectl context (default: the current context)")
        parser.add_argument("--k8s-dir", type=Path, default=None, help="the k8s/ directory (default: this checkout's)")
        parser.add_argument("--kubectl", default=None, help="kubectl binary (default: $KUBECTL, then PATH)")

    render = sub.add_parser("render", help="write the environment's manifests (kubectl kustomize + checks)",
                            description="Render k8s/overlays/ENV with kustomize, set serveConfigV2 from the "
                            "serve-config generator, check the front door's port, print or write the manifests. "
                            "Needs no cluster.")
    common(render, cluster=False)
    render.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    render.set_defaults(func=cmd_render)

    apply = sub.add_parser("apply", help="apply the environment and wait for the RayService to be ready",
                           description="Check the context, the KubeRay (and Prometheus operator) CRDs and the "
                           "required Secrets, server-side apply the rendered manifests, then wait until the "
                           "RayService is Ready, printing progress. Prints the final status as JSON.")
    common(apply)
    apply.add_argument("--timeout", type=float, default=None,
                       help="seconds to wait for readiness (default: the environment's ready_timeout_s)")
    apply.add_argument("--poll-interval", type=float, default=5, help="seconds between status polls (default: 5)")
    apply.add_argument("--no-wait", action="store_true", help="return right after applying")
    apply.set_defaults(func=cmd_apply)

    status = sub.add_parser("status", help="summarise the RayService, its Serve apps and pods (JSON)",
                            description="Print the RayService's readiness, Serve application statuses and the "
                            "Ray pods as JSON; --check exits 3 when not ready.")
    common(status)
    status.add_argument("--check", action="store_true", help="exit 3 if the RayService is not ready")
    status.set_defaults(func=cmd_status)

    delete = sub.add_parser("delete", help="delete the environment's objects (keeps the namespace and Secrets)",
                            description="Delete everything `apply` created except the Namespace, which also "
                            "holds your Secrets. KubeRay then removes the Ray cluster.")
    common(delete)
    delete.set_defaults(func=cmd_delete)
