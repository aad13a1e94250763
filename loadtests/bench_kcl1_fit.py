"""Does kcl1-dev fit? The Ray cluster of the KubeRay environment ``kcl1-dev`` (k8s/overlays/kcl1/dev), as
its manifests render it, on this machine: a head node and the manifest's worker nodes (one ``ray start``
each, on 127.0.0.1, 127.0.0.2, ...), the head's and workers' ``rayStartParams`` (object store size,
dashboard, CPUs), the RayService's own serveConfigV2 (router replicas, batch API, Matrix bot), under the
seed's P5 load (locust, >= 10 req/s through the front door). Every 0.5 s, the RSS of each node's whole
process tree; its peak is held against the pod's memory limit in the manifests (head 1 Gi, worker 1.2 Gi).

What differs from the cluster, and why (all listed in the results' ``details.substitutions``): the
external backends (Rocket vLLM and Ollama, LM Studio, Anthropic) are one stock vLLM server on the tiny
model (vLLM speaks OpenAI and Anthropic Messages but not Ollama's /api/chat: that backend becomes
``kind: openai``); the homeserver is a local Synapse; the shared NFS paths are a local directory; every
address is loopback and every port a free one. Secrets are generated and never printed.

    .venv/bin/python -m loadtests.bench_kcl1_fit [--rounds 1] [--duration 60]
    ray-serve-cai bench --only kcl1-fit --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launchers.kuberay.environments import Layout
from launchers.kuberay.kubectl import Kubectl
from launchers.kuberay.render import render
from launchers.local import AUTH_ENV, LOOPBACK_ENV, deploy_config, free_port
from launchers.polling import PollTimeout, poll_until
from launchers.reaper import guard
from loadtests.bench_locust import locust, read_stats
from loadtests.matrix_synapse import Synapse
from loadtests.output import progress, result_path, write_output
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.ray_nodes import RayNode, TreeMemory, get_json, head_up, kill_all, node_alive
from loadtests.servers import Proc, start_vllm, wait_http
from ray_serve_cai.bench.results import BenchOutput, BenchSettings, Row, headline

ENV = "kcl1-dev"
STAND_IN_MODEL = "tiny-chat"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def quantity_mib(text: str) -> float:
    """A Kubernetes memory quantity (``1Gi``, ``1.2Gi``, ``512Mi``) in MiB."""
    match = re.fullmatch(r"([0-9.]+)([KMG]i?)?", str(text).strip())
    if not match:
        raise ValueError(f"not a memory quantity: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2) or ""] / 2**20


@dataclass(frozen=True)
class Manifests:
    """What the rendered kcl1-dev RayService says the cluster runs."""

    head_params: dict[str, str]
    worker_params: dict[str, str]
    workers: int
    head_limit_mib: float
    worker_limit_mib: float
    worker_env: list[str]  # names the worker pods get (their values are Secrets)
    serve_config: dict[str, Any]


def read_manifests() -> Manifests:
    rendered = render(Layout(), Kubectl(), ENV)
    spec = rendered.rayservice["spec"]["rayClusterConfig"]
    head, (group,) = spec["headGroupSpec"], spec["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    return Manifests(
        head_params={k: str(v) for k, v in head["rayStartParams"].items()},
        worker_params={k: str(v) for k, v in group["rayStartParams"].items()},
        workers=int(group["replicas"]),
        head_limit_mib=quantity_mib(head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]),
        worker_limit_mib=quantity_mib(container["resources"]["limits"]["memory"]),
        worker_env=[e["name"] for e in container.get("env") or []],
        serve_config=rendered.serve_config,
    )


@dataclass(frozen=True)
class StandIns:
    """The local things that replace kcl1's external ones."""

    backend_url: str  # one stock vLLM server for all four backends (the nodes' memory does not depend on
    # how many servers answer; one leaves the 2-core machine's CPU to the nodes under test)
    homeserver: str
    bot_user: str
    shared_dir: Path  # kcl1's NFS volume


def local_config(raw: dict[str, Any], stand: StandIns) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """kcl1-dev's serve config with its outside world replaced (``StandIns``) and loopback ports; returns
    the config, the ports it opens and every substitution in words."""
    config, notes = copy.deepcopy(raw), []
    ports = {"serve_http": free_port(), "front_door": free_port(), "grpc": free_port()}
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": ports["serve_http"]}
    config.setdefault("grpc_options", {})["port"] = ports["grpc"]
    notes.append("http_options and router.listen on 127.0.0.1 and free ports (kcl1: 0.0.0.0:8000 and :8001); "
                 "proxies and router replicas of all nodes share them with SO_REUSEPORT, as pods share a Service")
    for app in config["applications"]:
        args = app.get("args") or {}
        if "listen" in (args.get("router") or {}):
            args["router"]["listen"] = {"host": "127.0.0.1", "port": ports["front_door"]}
        for backend in args.get("backends") or []:
            url = stand.backend_url
            notes.append(f"backend {backend['name']} ({backend['kind']}, {backend['url']}) -> stock vLLM {url}"
                         + (" as kind openai (vLLM has no Ollama /api/chat)" if backend["kind"] == "ollama" else ""))
            if backend["kind"] == "ollama":
                backend["kind"], backend["health"] = "openai", {"path": "/health"}
            backend["url"] = url
            for model in backend.get("models") or []:
                model["name"] = STAND_IN_MODEL  # aliases (default) stay
        if args.get("matrix"):
            matrix, server = args["matrix"], stand.bot_user.split(":", 1)[1]
            notes.append(f"matrix homeserver {matrix['homeserver']} -> local Synapse {stand.homeserver} "
                         f"(bot {stand.bot_user}), so the bot logs in and syncs as on kcl1; kcl1-dev has no switch "
                         "to turn the bot off, and with no homeserver it would only retry its login")
            old_server = matrix["user_id"].split(":", 1)[1]
            matrix.update(homeserver=stand.homeserver, user_id=stand.bot_user,
                          store_path=str(stand.shared_dir / "matrix"))
            allow = matrix.get("allow") or {}
            for key in ("users", "rooms"):
                allow[key] = [p.replace(f":{old_server}", f":{server}") for p in allow.get(key) or []]
        if "storage" in (args.get("batch") or {}):
            notes.append(f"batch.storage {args['batch']['storage']} (NFS) -> {stand.shared_dir / 'batch'}")
            args["batch"]["storage"] = str(stand.shared_dir / "batch")
    return config, ports, notes


def node_env(extra: dict[str, str]) -> dict[str, str]:
    """A pod's environment here: loopback-only Ray without token auth (KubeRay's token is for a cluster's
    network), the checkout importable, plus the pod's own variables."""
    return {**os.environ, **AUTH_ENV, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT), **extra}


def wait_rollout(head: RayNode, front_door: str, timeout_s: float) -> None:
    """Every app RUNNING (both router replicas placed), then the front door's /ready answers 200."""
    def running() -> bool:
        apps = (get_json(f"{head.dashboard_url}/api/serve/applications/") or {}).get("applications") or {}
        failed = [n for n, a in apps.items() if a.get("status") == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError(f"app(s) {failed} failed to deploy: {apps[failed[0]].get('message', '')[-300:]}")
        return bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())

    try:
        poll_until(running, timeout_s, 1.0)
    except PollTimeout:
        raise RuntimeError(f"the serve config was not RUNNING within {timeout_s:.0f}s") from None
    wait_http(f"{front_door}/ready", 60)


def one_round(index: int, manifests: Manifests, stand: StandIns, secrets_env: dict[str, str], workdir: Path,
              duration: float, users: int) -> list[dict[str, Any]]:
    """A fresh cluster, the serve config deployed, the P5 load, every node's tree sampled; stopped."""
    config, ports, _ = local_config(manifests.serve_config, stand)
    path = workdir / f"r{index}-serve.yaml"
    path.write_text(yaml.safe_dump(config))
    temp = Path(tempfile.mkdtemp(prefix=f"rsc-k1-{index}-", dir="/tmp"))
    head = RayNode("head", "127.0.0.1", manifests.head_params, node_env({}), temp / "head")
    workers = [RayNode(f"worker-{i}", f"127.0.0.{i + 1}", manifests.worker_params,
                       node_env({k: v for k, v in secrets_env.items() if k in manifests.worker_env}),
                       temp / f"worker-{i}", head_address=head.address) for i in range(1, manifests.workers + 1)]
    memory = TreeMemory([head, *workers]).start()
    front_door = f"http://127.0.0.1:{ports['front_door']}"
    try:
        progress(f"round {index}: head and {len(workers)} worker node(s) (logs {temp})")
        head.start(lambda: head_up(head))
        for worker in workers:
            worker.start(lambda w=worker: node_alive(head, w.ip))
        memory.mark("nodes_up")
        deploy_config(head.dashboard_url, path)
        wait_rollout(head, front_door, 300)
        memory.mark("ready")
        time.sleep(2)
        memory.mark("load_start")
        prefix = workdir / f"r{index}-load"
        locust(front_door, prefix, duration, users, 1.0, 32, model="default",
               env={"OPENAI_API_KEY": secrets_env["ROUTER_API_KEYS"]})
        memory.mark("load_end")
        load = read_stats(prefix)
    except BaseException:
        progress(f"round {index} failed; the nodes' logs stay in {temp}")
        raise
    finally:
        memory.stop()
        for node in [*workers, head]:
            node.stop()
        left = kill_all(memory.leftovers())
    shutil.rmtree(temp, ignore_errors=True)  # a round that worked: its session dirs (sockets, logs) go
    progress(f"round {index}: {load['rps']:.1f} req/s, errors {load['failures']}/{load['requests']}; peaks "
             + ", ".join(f"{n.name} {memory.peak(n.name)} MiB" for n in [head, *workers]))
    rows = [{"round": index, "target": "front door", **load}]
    for node in [head, *workers]:
        limit = manifests.head_limit_mib if node is head else manifests.worker_limit_mib
        rows.append({"round": index, "target": node.name, "peak_rss_mib": memory.peak(node.name),
                     "peak_pss_mib": memory.peak(node.name, pss=True),
                     "peak_pss_under_load_mib": memory.peak(node.name, "load_start", "load_end", pss=True),
                     "peak_rss_under_load_mib": memory.peak(node.name, "load_start", "load_end"),
                     "rss_when_ready_mib": memory.peak(node.name, "ready", "load_start"),
                     "limit_mib": limit, "samples": len(memory.series.get(node.name, [])),
                     "processes_at_peak": memory.at_peak.get(node.name, {}),
                     "series": memory.series.get(node.name, []), "pss_series": memory.pss_series.get(node.name, []),
                     "marks": memory.marks,
                     "leftovers_killed": left})
    return rows


def measure(workdir: Path, rounds: int, duration: float, users: int, pause: float) -> tuple[list[dict], dict[str, Any]]:
    guard()  # whatever this process started dies with it, SIGKILL included
    manifests = read_manifests()
    stand_in: Proc | None = None
    synapse = Synapse(workdir / "synapse")
    try:
        stand_in = start_vllm(workdir / "vllm.log", timeout=600)  # slow on a busy 2-core machine
        synapse.start(timeout=300)  # ~1 s on an idle machine; minutes on a busy one
        bot = synapse.register("ray-bot")
        stand = StandIns(stand_in.url, synapse.url, bot["user_id"], workdir / "shared")
        secrets_env = {"ROUTER_API_KEYS": secrets.token_urlsafe(24), "ANTHROPIC_API_KEY": "stand-in",
                       "OPENAI_API_KEY": "stand-in", "MATRIX_ACCESS_TOKEN": bot["access_token"]}
        _, _, notes = local_config(manifests.serve_config, stand)
        rows: list[dict] = []
        for index in range(rounds):
            time.sleep(pause)
            rows += one_round(index, manifests, stand, secrets_env, workdir, duration, users)
    finally:
        synapse.stop()
        if stand_in is not None:
            stand_in.kill()
    details = {"environment": ENV, "head_ray_start_params": manifests.head_params,
               "worker_ray_start_params": manifests.worker_params, "worker_nodes": manifests.workers,
               "head_limit_mib": manifests.head_limit_mib, "worker_limit_mib": manifests.worker_limit_mib,
               "substitutions": notes, "duration_s": duration, "users": users, "rate_per_user": 1.0,
               "max_tokens": 32, "mix": "chat:1,stream:1", "sample_interval_s": 0.5,
               "memory": "RSS and PSS summed over each node's `ray start` and every process below it (and any "
                         "that left its tree while running), sampled every 0.5 s with psutil. The RSS sum counts "
                         "shared pages (Python, Ray's libraries) once per process: an upper bound of what the "
                         "pod's cgroup is charged; the PSS sum splits them between their sharers and is close "
                         "to it"}
    return rows, details


def to_output(rows: list[dict], details: dict[str, Any]) -> BenchOutput:
    def values(target: str, key: str) -> list[float | None]:
        return [r[key] for r in rows if r["target"] == target]

    worker_peaks = [r["peak_rss_mib"] for r in rows if r["target"].startswith("worker-") and r["peak_rss_mib"]]
    head_peaks = [p for p in values("head", "peak_rss_mib") if p]
    pss = {t: [r["peak_pss_mib"] for r in rows if r["target"].startswith(t) and r["peak_pss_mib"]]
           for t in ("head", "worker-")}
    headlines = [
        headline("head peak RSS (whole node)", max(head_peaks, default=None), "MiB",
                 at_most=details["head_limit_mib"]),
        headline("worker peak RSS (largest node)", max(worker_peaks, default=None), "MiB", at_most=details["worker_limit_mib"]),
        headline("head peak PSS (whole node)", max(pss["head"], default=None), "MiB", at_most=details["head_limit_mib"]),
        headline("worker peak PSS (largest node)", max(pss["worker-"], default=None), "MiB",
                 at_most=details["worker_limit_mib"]),
        headline("front door req/s", values("front door", "rps"), at_least=10),
        headline("front door error rate", values("front door", "error_rate"), at_most=0.01),
        headline("front door TTFT p50", values("front door", "ttft_p50_ms"), "ms", at_most=500),
        headline("front door TTFT p95", values("front door", "ttft_p95_ms"), "ms", at_most=2000),
    ]
    table = [Row(round=r["round"], target=r["target"],
                 metrics={k: v for k, v in r.items() if isinstance(v, int | float | None) and k != "round"})
             for r in rows]
    per_node = {f"r{r['round']}-{r['target']}": {k: r[k] for k in ("processes_at_peak", "series", "pss_series", "marks",
                                                                    "leftovers_killed")}
                for r in rows if r["target"] != "front door"}
    return BenchOutput(rows=table, headlines=headlines, details={**details, "nodes": per_node})


def run(settings: BenchSettings) -> BenchOutput:
    duration, users, pause = (10.0, 12, 1.0) if settings.tiny else (60.0, 12, 3.0)
    rows, details = measure(settings.workdir, settings.rounds, duration, users, pause)
    return to_output(rows, details)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per round")
    parser.add_argument("--users", type=int, default=12, help="locust users at 1 req/s each")
    parser.add_argument("--out", type=Path, default=result_path("bench_kcl1_fit"))
    args = parser.parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="bench-kcl1-"))
    rows, details = measure(workdir, args.rounds, args.duration, args.users, 3.0)
    write_output(to_output(rows, details), args.out)


if __name__ == "__main__":
    main()
