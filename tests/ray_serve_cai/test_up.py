"""The README's first command, end to end: `ray-serve-cai up` on the shipped local config.

The shipped config is copied with a free port for its one door (8000 may be taken); everything else is
as shipped: the router's own listener over a real vLLM engine replica of the tiny model, and Serve's
HTTP proxy off. The same run with ``router.colocate`` (the engine inside the router replica) checks
the in-process path end to end. SIGTERM must tear down every process the cluster started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from launchers.local import free_port
from launchers.procs import descendants

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def _read_until_ready(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    buffer = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            buffer += line
            if line.startswith("ready: "):
                return line
        if proc.poll() is not None:
            break
    raise AssertionError(f"`up` never printed ready (exit {proc.poll()}):\n{buffer}\n{proc.stderr.read()[-3000:]}")


class StartupProbe(threading.Thread):
    """Sends a chat request to each door every half second until stopped, recording what came back."""

    def __init__(self, urls: list[str], model: str) -> None:
        super().__init__(daemon=True)
        self.urls, self.model, self.stop, self.seen = urls, model, threading.Event(), []

    def run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with httpx.Client() as client:
            while not self.stop.is_set():
                for url in self.urls:
                    started = time.monotonic()
                    try:
                        response = client.post(url + "/v1/chat/completions", json=body, timeout=10)
                        answer: object = response
                    except httpx.ConnectError:
                        continue  # nothing listens yet: a refusal is an answer too
                    except httpx.HTTPError as exc:
                        answer = exc
                    self.seen.append((url, time.monotonic() - started, answer))
                self.stop.wait(0.5)


@pytest.mark.parametrize("colocate", [False, True], ids=["shipped", "colocate"])
def test_up_serves_the_shipped_local_config_and_tears_down(tmp_path, colocate):
    """Shipped: the README's `up`, on the real model (SmolLM2), which must answer a question right.
    Colocate: the tiny model, engine inside the router replica."""
    config = yaml.safe_load((ROOT / "serve_configs" / ("local-tiny.yaml" if colocate else "local.yaml")).read_text())
    model = config["applications"][0]["args"]["engines"][0]["name"]
    if colocate:
        config["applications"][0]["args"]["router"]["colocate"] = True
        del config["applications"][0]["args"]["engines"][0]["num_replicas"]
    serve_port = free_port()
    config["http_options"]["port"] = serve_port
    port = free_port()
    config["applications"][0]["args"]["router"]["listen"]["port"] = port
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "ray_serve_cai", "up", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    probe = StartupProbe([url], model)
    probe.start()
    try:
        line = _read_until_ready(proc, timeout_s=900)
        probe.stop.set()
        probe.join(15)
        # While the engine loads, the door answers at once: 503 + Retry-After + an OpenAI error.
        timeline = "\n".join(f"{u} {e:.2f}s {getattr(a, 'status_code', a)!r}" for u, e, a in probe.seen)
        # Colocated, the door shares its process (and the GIL) with the thread importing and building
        # the engine: answers stay prompt on a quiet machine, and took up to 5 s at load average 17.
        bound = 10 if colocate else 3
        for _, elapsed, answer in probe.seen:
            assert isinstance(answer, httpx.Response), f"{answer!r} after {elapsed:.1f} s\n{timeline}"
            assert elapsed < bound, f"took {elapsed:.1f} s during start-up\n{timeline}"
        early = [a for _, _, a in probe.seen if a.status_code != 200]
        assert early, f"no answer seen while the engine was loading\n{timeline}"
        for answer in early:
            assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1, answer.text
            assert answer.json()["error"]["message"]
        assert line.startswith(f"ready: {url}/v1")
        # one door: Serve's HTTP proxy is off, nothing answers on its port
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{serve_port}/-/healthz", timeout=5)
        expected = "in-process" if colocate else "http"  # http: the router learns the engine's port on a health round
        deadline = time.monotonic() + 60
        while (local := httpx.get(f"{url}/v1/backends", timeout=10).json()["data"][0])["transport"] != expected:
            assert time.monotonic() < deadline, local
            time.sleep(1)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        body = {"model": model, "messages": question, "max_tokens": 16, "temperature": 0}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200
        if colocate:  # the tiny model's answer is gibberish: the token count is what can be checked
            assert response.json()["usage"]["completion_tokens"] == 16
        else:
            assert "Paris" in response.json()["choices"][0]["message"]["content"], response.text
        assert response.headers["x-backend"] == "local"
        text = response.json()["choices"][0]["message"]["content"]
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as streamed:
            assert streamed.headers["x-backend"] == "local"
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert "".join(httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"].get("content") or ""
                       for line in lines[:-1] if '"choices":[{' in line) == text
        tree = descendants(proc.pid)
        assert len(tree) > 3  # ray, raylet, gcs, replicas, engine processes...
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(180)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    time.sleep(1)
    alive = [pid for pid in tree if os.path.exists(f"/proc/{pid}") and
             "zombie" not in open(f"/proc/{pid}/status").read().lower()]
    assert alive == [], f"processes left behind: {alive}"
