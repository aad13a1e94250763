"""What this machine's CPU can do, from /proc/cpuinfo (Linux; elsewhere: nothing known).

Stdlib only: vLLM's plugin (``serve_apps/vllm_plugin.py``) imports it while vLLM is importing itself.
"""

from __future__ import annotations

from functools import lru_cache

# Flags that make bfloat16 matmuls native rather than emulated.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first ``flags`` line (not ``vmx flags``)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            return parse_cpu_flags(file.read())
    except OSError:
        return frozenset()


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """AMX tiles (Intel Sapphire Rapids and later)."""
    return "amx_tile" in (cpu_flags() if flags is None else flags)


def cpu_native_dtype(flags: frozenset[str] | None = None) -> str:
    """``bfloat16`` where the CPU computes it natively, else ``float32``: on a CPU with only AVX2
    (AMD Zen 3, older Xeons) vLLM's CPU build emulates bf16, and SmolLM2-135M generated 5x fewer
    tokens/s in bf16 than in float32 there (32 against 160 tok/s for 32 prompts, 7 Dec)."""
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"
