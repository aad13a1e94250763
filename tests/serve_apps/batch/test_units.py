"""Pure pieces: the ``batch:`` config section, offline sampling parameters and engine threads, line checks,
storage ids."""

from __future__ import annotations

import io
import json
import os

import pytest

from serve_apps.batch.lines import scan
from serve_apps.batch.predictor import LineError, sampling_kwargs
from serve_apps.batch.storage import Storage
from serve_apps.checks import parse_router_args

BACKENDS = [{"name": "a", "kind": "openai", "url": "http://127.0.0.1:9"}]


def test_batch_section_is_validated_with_its_dotted_path():
    args = parse_router_args({"backends": BACKENDS, "batch": {"storage": "s3://b/p", "concurrency": 8}})
    assert args.batch.storage == "s3://b/p" and args.batch.max_requests == 50_000
    with pytest.raises(ValueError, match=r"batch\.concurrenc: Extra inputs"):
        parse_router_args({"backends": BACKENDS, "batch": {"concurrenc": 8}})
    with pytest.raises(ValueError, match=r"batch\.concurrency"):
        parse_router_args({"backends": BACKENDS, "batch": {"concurrency": 0}})


def test_sampling_parameters_map_or_refuse():
    kwargs = sampling_kwargs({"model": "m", "prompt": "x", "max_completion_tokens": 5, "temperature": 0,
                              "stop": ["\n"], "stream": False})
    assert kwargs == {"max_tokens": 5, "temperature": 0, "stop": ["\n"]}
    assert sampling_kwargs({"messages": []}) == {"max_tokens": None}  # up to the context, like the server
    with pytest.raises(LineError) as err:
        sampling_kwargs({"messages": [], "logprobs": True, "tools": []})
    assert err.value.status == 400 and err.value.body()["error"]["param"] == "logprobs"


def test_scan_limits_and_blank_lines():
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}})
    assert scan(io.BytesIO(f"\n{line}\n\n".encode()), "/v1/completions", 1000, 10).errors == []
    result = scan(io.BytesIO(b""), None, 1000, 10)
    assert [e.code for e in result.errors] == ["empty_file"]
    many = "".join(line.replace('"a"', f'"{i}"') + "\n" for i in range(3))
    assert [e.code for e in scan(io.BytesIO(many.encode()), None, 1000, 2).errors] == ["too_many_requests"]
    big = scan(io.BytesIO((line + "\n").encode()), None, 10, 10)
    assert [(e.code, e.line) for e in big.errors] == [("request_too_large", 1)]


def test_ids_cannot_escape_the_storage_root(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    (tmp_path / "secret.json").write_text("{}")
    for bad in ("../secret", "a/b", "", "x" * 200):
        assert storage.get_file(bad) is None and storage.get_batch(bad) is None


def test_engine_threads_share_the_machine_or_follow_the_cluster_reservation(tmp_path):
    from serve_apps.batch.offline import OfflineJob

    cores = len(os.sched_getaffinity(0))
    job = OfflineJob(input="in.jsonl", output=tmp_path / "out.jsonl", model="m")
    assert job.engine_threads() == cores  # one replica on a private instance: every core
    assert OfflineJob(input="i", output=tmp_path, model="m", replicas=cores * 2).engine_threads() == 1
    on_cluster = OfflineJob(input="i", output=tmp_path, model="m", address="ray://h:10001", cpus_per_replica=3)
    assert on_cluster.engine_threads() == 3  # the CPUs Ray reserves for it there, not this machine's
    assert OfflineJob(input="i", output=tmp_path, model="m", cpu_threads=5).engine_threads() == 5


def test_cpu_engines_run_inline_unless_the_user_says_otherwise(monkeypatch):
    from serve_apps.batch.predictor import inline_engine_on_cpu

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    inline_engine_on_cpu()  # this machine has no GPU: vLLM's platform is CPU
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    inline_engine_on_cpu()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
