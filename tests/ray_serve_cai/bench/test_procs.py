"""Which kind of process a /proc entry is, and whose tree it belongs to (the memory report's grouping)."""

from __future__ import annotations

from ray_serve_cai.bench.procs import _Proc, classify


def proc(pid: int, ppid: int, cmdline: str) -> _Proc:
    return _Proc(pid=pid, ppid=ppid, session=100, rss=0, cmdline=cmdline)


def test_unnamed_processes_belong_to_their_nearest_named_ancestor():
    procs = [proc(100, 1, "python -m ray_serve_cai.bench.child p2"),
             proc(101, 100, "python -m vllm.entrypoints.openai.api_server --model m"),
             proc(102, 101, "VLLM::EngineCore"), proc(103, 102, "VLLM::Worker"),
             proc(110, 100, "ray start --head --block"), proc(111, 110, "raylet --x"),
             proc(112, 111, "ray::ServeReplica:r1:MultiBackendRouter"),
             proc(113, 111, "ray::ServeReplica:r2:MultiBackendRouter"),
             proc(114, 111, "ray::ServeReplica:router:engine-tiny-chat"), proc(115, 114, "VLLM::EngineCore"),
             proc(116, 111, "ray::IDLE"), proc(120, 100, "sleep 5")]
    owners = classify(procs, root=100)
    assert owners[103] == owners[102] == owners[101] == ("stock vLLM server", 101)
    assert owners[112] == ("router replica", 112) and owners[113] == ("router replica", 113)
    assert owners[115] == ("engine replica", 114)
    assert owners[111] == ("ray system", 111) and owners[116] == ("ray idle workers", 116)
    assert owners[120] == owners[100] == ("benchmark driver", 100)
