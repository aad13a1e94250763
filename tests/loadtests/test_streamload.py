"""``StreamTally`` (``loadtests.streamload``): a benchmark's streamed tokens come from usage, not from counting events.
``run_contained``: nothing a benchmark's child started outlives it."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest

from launchers.polling import poll_until
from launchers.procs import running
from loadtests.client import chat_body, completion_body
from loadtests.processes import run_contained
from loadtests.streamload import StreamTally


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_merged_events_count_every_token_from_usage():
    """vLLM under load sends several tokens in one event: 2 events, 5 tokens."""
    tally = StreamTally()
    tally.add(200, sse(delta("a b c"), delta(" d e"), {"choices": [], "usage": {"completion_tokens": 5}}), 0.1)
    tally.add(200, sse(delta("x"), {"choices": [], "usage": {"completion_tokens": 1}}), 0.3)
    assert (tally.tokens, tally.events, tally.errors, tally.ttfts) == (6, 3, 0, [0.1, 0.3])


def test_a_stream_without_done_usage_or_200_is_an_error():
    tally = StreamTally()
    tally.add(200, sse(delta("a")), 0.1)  # no usage chunk
    tally.add(500, sse({"choices": [], "usage": {"completion_tokens": 1}}), 0.1)
    tally.add(200, b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\n', 0.1)  # cut before [DONE]
    assert (tally.tokens, tally.errors, tally.ttfts) == (0, 3, [])


def test_generated_text_that_spells_the_key_is_not_usage():
    """In generated text the key's quotes are escaped, so only the usage object's count is read."""
    tally = StreamTally()
    tally.add(200, sse(delta('"completion_tokens": 99'), {"choices": [], "usage": {"completion_tokens": 1}}), 0.1)
    assert tally.tokens == 1


def test_streaming_benchmark_requests_ask_for_usage():
    body = json.loads(chat_body(64, stream=True))
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert "stream_options" not in json.loads(chat_body(1, stream=False))
    completion = json.loads(completion_body(64))  # the engine benchmarks' request
    assert completion["stream_options"] == {"include_usage": True} and completion["ignore_eos"] is True


def test_a_completion_stream_counts_its_usage_tokens():
    """Completion streams (``bench_engine``, ``bench_scaling``) carry ``text``, not ``content``: tokens and
    TTFT still come from usage and [DONE]."""
    tally = StreamTally()
    tally.add(200, sse({"choices": [{"index": 0, "text": "def"}]}, {"choices": [], "usage": {"completion_tokens": 64}}),
              0.05)
    assert (tally.tokens, tally.errors, tally.ttfts) == (64, 0, [0.05])


def gone(pid: int) -> bool:
    return not running([pid])


def test_a_grandchild_left_behind_is_killed_with_the_child():
    """Like vLLM's engine core outliving its parent: the child starts a grandchild and exits."""
    script = "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']).pid)"
    done = run_contained([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 0
    poll_until(partial(gone, int(done.stdout)), 5, 0.05)


def test_a_timeout_kills_the_whole_session(tmp_path):
    marker = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
              " open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(300)")
    with pytest.raises(subprocess.TimeoutExpired):
        run_contained([sys.executable, "-c", script, str(marker)], timeout=3)
    poll_until(partial(gone, int(marker.read_text())), 5, 0.05)
