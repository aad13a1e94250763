"""The names ``loadtests/bench_kcl1_fit.py`` still imports from here, until it imports the modules that
hold them (``loadtests.paths``, ``output``, ``processes``, ``servers``). Nothing else uses this module;
new code imports those modules directly."""

from __future__ import annotations

from loadtests.output import progress, write_output
from loadtests.paths import ROOT
from loadtests.processes import stop_on_sigterm
from loadtests.servers import Proc, start_vllm, wait_http

__all__ = ["ROOT", "Proc", "progress", "start_vllm", "stop_on_sigterm", "wait_http", "write_output"]
