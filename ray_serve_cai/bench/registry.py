"""The benchmarks ``ray-serve-cai bench`` knows: a name, what it compares, and where its function lives.

Each function lives in ``loadtests/`` (a source checkout, not the installed package), takes a
``BenchSettings`` and returns a ``BenchOutput``; it is imported only in the child process that runs it,
so a missing module or dependency fails that one benchmark with a clear error, not the command.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ray_serve_cai.bench.results import BenchOutput, BenchSettings


class BenchmarkMissing(RuntimeError):
    """The benchmark's module or function is not there (yet)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    baseline: str
    target: str  # "module:function"
    budget_s: float  # the runner stops it after this long (full settings; tiny runs get a third)

    def load(self) -> Callable[[BenchSettings], BenchOutput]:
        module_name, _, function = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise BenchmarkMissing(f"benchmark {self.name!r}: module {module_name} is missing "
                                       "(needs a source checkout with loadtests/)") from None
            raise
        if not hasattr(module, function):
            raise BenchmarkMissing(f"benchmark {self.name!r}: {module_name} has no function {function}()")
        return getattr(module, function)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("p1", "P1 front door vs stock vLLM server", "stock vLLM OpenAI server",
              "loadtests.bench_frontdoor:run", 1800),
    Benchmark("p1-real", "P1 on the quick-start model (SmolLM2-135M, serve_configs/local.yaml) vs stock vLLM",
              "stock vLLM OpenAI server, same model and dtype", "loadtests.bench_frontdoor:run_real", 2700),
    Benchmark("startup", "up until ready vs a stock vLLM server until its first generation, where the seconds go",
              "stock vLLM OpenAI server", "loadtests.bench_startup:run", 2700),
    Benchmark("engine", "engine replica behind Serve vs stock vLLM server (streams)", "stock vLLM OpenAI server",
              "loadtests.bench_engine:run", 1500),
    Benchmark("p2", "P2 router added latency (c=1) and throughput (c=64)", "the same backend called directly",
              "loadtests.bench_router:run_p2", 1200),
    Benchmark("p2b", "P2b router vs LiteLLM proxy", "LiteLLM proxy, same backends",
              "loadtests.bench_router:run_p2b", 1500),
    Benchmark("p3", "P3 failover: preferred backend SIGKILLed at 10 req/s", "none (0 errors, moved <= 1 s)",
              "loadtests.bench_router_failover:run", 900),
    Benchmark("stream", "router streams to an engine replica: HTTP vs handle", "the engine worker's port",
              "loadtests.bench_router_stream:run", 1500),
    Benchmark("affinity", "router prefix_affinity vs least_outstanding on two engine replicas: prefix-cache hit "
              "rate, TTFT, router CPU", "least_outstanding, same replicas and conversations",
              "loadtests.bench_affinity:run", 2400),
    Benchmark("p4", "P4 batch: batch run vs LLM.generate; OpenAI batch vs c=64 client", "LLM.generate / c=64 client",
              "loadtests.bench_scripts:run_batch", 3600),
    Benchmark("matrix", "Matrix bot !infer vs straight to the router", "the same prompts over HTTP",
              "loadtests.bench_scripts:run_matrix", 1800),
    Benchmark("p5", "P5 seed targets under locust through the front door (+ backend killed at 1 min)",
              "the stock vLLM server under the same locust load", "loadtests.bench_locust:run", 2700),
    Benchmark("kcl1-fit", "kcl1-dev on a head and its worker nodes under P5 load: peak RSS of each node's "
              "process tree", "the pods' memory limits in k8s/overlays/kcl1/dev (head 1 Gi, worker 1.2 Gi)",
              "loadtests.bench_kcl1_fit:run", 2400),
    Benchmark("scaling", "throughput and TTFT vs concurrency; router CPU per request vs backends",
              "stock vLLM server; LiteLLM proxy", "loadtests.bench_scaling:run", 2400),
)}


def select(names: list[str] | None) -> list[Benchmark]:
    """The benchmarks to run, in registry order; unknown names raise ``KeyError`` naming them."""
    if not names:
        return list(BENCHMARKS.values())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [b for b in BENCHMARKS.values() if b.name in names]
