"""The locust suite's options and user mix, without a server: the file imports, its options parse from
the command line and the environment, and ``--mix`` picks the user classes locust will run.

Each check runs in a child interpreter: importing locust monkey-patches the standard library with
gevent, which must not happen inside the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from locust import events
from locust.argument_parser import parse_options
from locust.env import Environment
from loadtests import locustfile as lf
args = json.loads(sys.argv[1])
opts = parse_options(["-f", lf.__file__, "--headless", *args])
out = {k: getattr(opts, k) for k in ("model", "max_tokens", "mix", "backend", "rate_per_user", "batch_prompts", "api_key")}
users = [lf.ChatUser, lf.StreamUser, lf.PinnedUser, lf.BatchUser, lf.OpenAIBatchUser]
env = Environment(user_classes=users, parsed_options=opts, events=events)
try:
    events.init.fire(environment=env, runner=None, web_ui=None)
    out["users"] = {c.kind: c.weight for c in env.user_classes}
except SystemExit as exc:
    out["error"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def run_probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_") and k != "OPENAI_API_KEY"}
    return subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**clean, **(env or {})})


def probe(*args: str, env: dict[str, str] | None = None) -> dict:
    done = run_probe(*args, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def test_options_parse_from_the_command_line():
    out = probe("--model", "m", "--max-tokens", "7", "--mix", "chat:3,pinned:1", "--backend", "b",
                "--rate-per-user", "1.5", "--batch-prompts", "4", "--api-key", "sk-x")
    assert (out["model"], out["max_tokens"], out["backend"]) == ("m", 7, "b")
    assert (out["rate_per_user"], out["batch_prompts"], out["api_key"]) == (1.5, 4, "sk-x")
    assert out["users"] == {"chat": 3, "pinned": 1}


def test_options_read_the_environment():
    out = probe(env={"LOCUST_MODEL": "from-env", "LOCUST_MIX": "stream:2,batch:1", "OPENAI_API_KEY": "sk-env"})
    assert (out["model"], out["api_key"], out["max_tokens"]) == ("from-env", "sk-env", 32)
    assert out["users"] == {"stream": 2, "batch": 1}


def test_default_mix_is_chat_and_stream():
    assert probe()["users"] == {"chat": 1, "stream": 1}


def test_pinned_users_need_a_backend():
    assert "--backend" in probe("--mix", "chat:1,pinned:1")["error"]


@pytest.mark.parametrize(("mix", "message"), [("chats:1", "unknown user kind"), ("chat:x", "not an integer"),
                                              ("chat:0", "no user kind"), ("chat:-1", "negative")])
def test_bad_mix_is_one_line_and_exit_2(mix, message):
    done = run_probe("--mix", mix)
    assert done.returncode == 2
    assert "argument --mix" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr
