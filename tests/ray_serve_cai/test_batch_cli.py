"""``ray-serve-cai batch run`` on a private Ray instance with one real vLLM engine of the tiny model:
a few hundred lines, the CLI SIGKILLed twice mid-run and resumed -- every custom_id exactly once, and
nothing of the killed CLI's Ray instance left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers.procs import descendants, running

CLI = [sys.executable, "-m", "ray_serve_cai"]
TOTAL = 300
# Small blocks of long-enough answers: the run must still be generating when each kill comes (with
# 16 tokens in blocks of 16 the engine wrote every remaining line in one burst before the kill).
TOKENS, BATCH_SIZE = 48, "8"


def request(i: int) -> dict:
    if i % 3 == 0:
        body = {"model": "tiny-chat", "prompt": f"def f{i}():", "max_tokens": TOKENS, "ignore_eos": True}
        return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": TOKENS,
            "ignore_eos": True, "temperature": 0}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=log.open("ab"), start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def kill_when(process: subprocess.Popen, output: Path, at_least: int, timeout: float = 400) -> int:
    """SIGKILL the CLI once ``output`` holds ``at_least`` lines; its whole Ray instance (GCS, raylet,
    agents, workers, engine processes) must be gone shortly after, with nobody reaping it by hand."""
    deadline = time.monotonic() + timeout
    while lines_in(output) < at_least:
        assert process.poll() is None, "the CLI exited before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    tree = descendants(process.pid)
    assert len(tree) >= 4, f"expected a Ray instance below the CLI, found {tree}"
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    gone_by = time.monotonic() + 20
    while running(tree) and time.monotonic() < gone_by:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in running(tree)}
    assert not left, f"processes of the killed CLI's Ray instance are still running: {left}"
    return lines_in(output)


@pytest.mark.engine
def test_killed_twice_and_resumed_writes_every_line_once(tmp_path):
    source = tmp_path / "in.jsonl"
    items = [request(i) for i in range(TOTAL)]
    items.insert(7, {"custom_id": "wrong-model", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "other", "messages": [{"role": "user", "content": "x"}]}})
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    output, log = tmp_path / "out.jsonl", tmp_path / "cli.log"
    args = ["batch", "run", str(source), "-o", str(output), "--model", "builtin:tiny-chat", "--batch-size", BATCH_SIZE]

    first = kill_when(start(args, log), output, 20)
    second = kill_when(start(args + ["--resume"], log), output, first + 20)
    assert first < second < TOTAL + 1, "the kills came too late to test anything"
    with output.open("ab") as handle:  # a kill mid-write leaves half a line: the resume must cut it off
        handle.write(b'{"id":"batch_req_partial","custom_id":"r1')
    finished = subprocess.run(CLI + args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "output tokens/s" in finished.stderr and "already in" in finished.stderr

    results = [json.loads(line) for line in output.read_text().splitlines()]
    ids = [r["custom_id"] for r in results]
    assert sorted(ids) == sorted(item["custom_id"] for item in items)  # all there, none twice
    by_id = {r["custom_id"]: r for r in results}
    assert by_id["wrong-model"]["response"]["status_code"] == 404
    assert by_id["wrong-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    chat, text = by_id["r1"]["response"], by_id["r0"]["response"]
    assert chat["status_code"] == 200 and chat["body"]["object"] == "chat.completion"
    assert chat["body"]["choices"][0]["message"]["role"] == "assistant"
    assert text["body"]["object"] == "text_completion" and text["body"]["usage"]["completion_tokens"] == TOKENS
    assert all(set(r) == {"id", "custom_id", "response", "error"} for r in results)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(request(0)) + "\n" + json.dumps(request(0)) + "\n{broken\n")
    result = subprocess.run(CLI + ["batch", "run", str(source), "-o", str(tmp_path / "o.jsonl"), "--model",
                                   "builtin:tiny-chat"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 2" in lines[0] and "line 3" in lines[0] and "duplicate" in lines[0]
    existing = tmp_path / "done.jsonl"
    existing.write_text("{}\n")
    source.write_text(json.dumps(request(0)) + "\n")
    result = subprocess.run(CLI + ["batch", "run", str(source), "-o", str(existing), "--model", "builtin:tiny-chat"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--resume" in result.stderr
    result = subprocess.run(CLI + ["batch", "run", str(source), "-o", str(tmp_path / "t.jsonl"), "--model",
                                   "builtin:tiny-chat", "--cpu-threads", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--cpu-threads must be at least 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
