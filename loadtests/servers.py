"""The servers a benchmark starts and stops: a stock vLLM server (the baseline), a Ray cluster with the
router deployed, the LiteLLM proxy from its own venv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launchers.local import LocalCluster, free_port
from launchers.polling import PollTimeout, poll_until
from loadtests.output import progress
from loadtests.paths import LITELLM_VENV, ROOT
from serve_apps.config import EngineConfig


def wait_http(url: str, timeout: float, expect: int = 200, headers: dict[str, str] | None = None) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=3) as response:
                return response.status == expect
        except Exception:
            return False

    try:
        poll_until(answers, timeout, 0.5)
    except PollTimeout:
        raise TimeoutError(f"{url} not ready in {timeout:.0f}s") from None


@dataclass
class Proc:
    process: subprocess.Popen
    url: str

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)


def spawn(cmd: list[str], env: dict[str, str], log: Path, port: int, ready_path: str, timeout: float) -> Proc:
    """Start a server in its own process group (in the caller's session, like ``LocalCluster``: every
    process under test in one autogroup, so the kernel schedules them alike) and wait until
    ``ready_path`` answers 200."""
    process = subprocess.Popen(cmd, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                               stderr=subprocess.STDOUT, process_group=0)
    proc = Proc(process, f"http://127.0.0.1:{port}")
    try:
        wait_http(proc.url + ready_path, timeout)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def start_vllm(log: Path, port: int | None = None, kv_cache_gb: int = 1, timeout: float = 300,
               engine: EngineConfig | None = None) -> Proc:
    """vLLM's stock OpenAI server on ``engine``'s model, served name and dtype (default: the tiny model,
    the baseline every benchmark compares against)."""
    engine = engine or EngineConfig(name="tiny-chat", model="builtin:tiny-chat")
    port = port or free_port()
    progress(f"starting a stock vLLM server on 127.0.0.1:{port} (~80 s; log {log})")
    dtype = engine.engine_dtype()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", engine.resolve_model_path(),
           "--served-model-name", engine.name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           *(["--dtype", dtype] if dtype != "auto" else [])]
    return spawn(cmd, {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}, log, port, "/health", timeout)


def start_router(backends: list[dict[str, Any]], workdir: Path, env: dict[str, str] | None = None,
                 haproxy: bool = True, listen_port: int | None = None) -> tuple[LocalCluster, str]:
    """A fresh Ray cluster on loopback with the router at /: Serve's fast path (THROUGHPUT_OPTIMIZED,
    set by LocalCluster) plus, by default, the HAProxy ingress. With ``listen_port`` the router also
    serves its own data-plane listener on that port (``router.listen``)."""
    extra = {"PYTHONPATH": str(ROOT), **(env or {})}
    progress(f"starting a Ray cluster and the router ({len(backends)} backends; ~30-60 s; log {workdir / 'ray.log'})")
    cluster = LocalCluster(haproxy=haproxy, extra_env=extra, log_path=workdir / "ray.log")
    cluster.start()
    port = free_port()
    config = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "router", "route_prefix": "/", "import_path": "serve_apps.router.app:build_router_app",
         "args": {"backends": backends,
                  **({"router": {"listen": {"port": listen_port}}} if listen_port else {})}}]}
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        cluster.deploy(path)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", 120)
        if listen_port:
            wait_http(f"http://127.0.0.1:{listen_port}/health", 30)
    except Exception:
        cluster.stop()
        raise
    return cluster, url


def start_litellm(backend_urls: list[str], workdir: Path, provider: str = "hosted_vllm") -> Proc:
    """LiteLLM proxy (its own venv: loadtests/setup_litellm_venv.sh) with the same backends and a
    fallback from the first to the second."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        raise SystemExit("LiteLLM venv missing: run loadtests/setup_litellm_venv.sh first")
    names = ["tiny-chat"] + [f"tiny-chat-fallback-{i}" for i in range(1, len(backend_urls))]
    config = {
        "model_list": [{"model_name": name, "litellm_params": {"model": f"{provider}/tiny-chat", "api_base": url + "/v1",
                                                                 "api_key": "none"}}
                       for name, url in zip(names, backend_urls, strict=False)],
        "router_settings": {"fallbacks": [{"tiny-chat": names[1:]}]} if len(names) > 1 else {},
        "general_settings": {"master_key": "sk-bench-master"},
        "litellm_settings": {"drop_params": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    progress(f"starting the LiteLLM proxy on 127.0.0.1:{port} (~20 s)")
    cmd = [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    return spawn(cmd, env, workdir / "litellm.log", port, "/health/liveliness", 180)
