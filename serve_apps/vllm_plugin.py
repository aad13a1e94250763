"""vLLM's ``vllm.general_plugins`` entry point: ask Linux for AMX tile permission in every vLLM process.

Why: on Intel Xeons with AMX (Sapphire Rapids and later, ``lscpu`` flags ``amx_tile amx_bf16``) vLLM
0.32's CPU build picks its AMX attention kernel for bf16 (``_get_attn_isa`` in
``vllm/v1/attention/backends/cpu_attn.py``), but nothing in the worker process asks the kernel for the
AMX tile state first (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``). The first AMX
instruction then kills the worker with SIGILL ("Fatal Python error: Illegal instruction", exit -4).

vLLM calls every ``vllm.general_plugins`` entry point in each process it starts -- the API server or
``LLM``, the EngineCore and every worker (``load_general_plugins`` in ``vllm/plugins/__init__.py``) --
so declaring this one in ``pyproject.toml`` covers engine replicas, ``batch run``'s engines and the
stock vLLM servers the benchmarks start from the same environment. On a CPU without AMX, or off
x86-64 Linux, it does nothing. A user who sets ``VLLM_PLUGINS`` must name ``ray_serve_cai_amx`` in it.

Stdlib only: vLLM imports this while it is still importing itself.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

from serve_apps.cpu_features import has_amx

logger = logging.getLogger(__name__)

# From the Linux UAPI: arch/x86/include/uapi/asm/prctl.h and the x86-64 syscall table.
SYS_ARCH_PRCTL = 158
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def _is_x86_64_linux() -> bool:
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def _arch_prctl(code: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(code), ctypes.c_ulong(arg))
    return 0 if result == 0 else -ctypes.get_errno()


def permitted_xfeatures() -> int | None:
    """The bitmask of extended CPU features this process may use (``ARCH_GET_XCOMP_PERM``), or None
    where the call does not exist (not x86-64 Linux, or a kernel older than 5.16)."""
    if not _is_x86_64_linux():
        return None
    mask = ctypes.c_uint64(0)
    if _arch_prctl(ARCH_GET_XCOMP_PERM, ctypes.addressof(mask)) != 0:
        return None
    return mask.value


def amx_permitted() -> bool:
    """Whether this process may use AMX tiles now."""
    mask = permitted_xfeatures()
    return mask is not None and bool(mask >> XFEATURE_XTILEDATA & 1)


def request_amx_permission() -> bool:
    """Ask the kernel for AMX tile state for this process. Returns whether AMX is usable afterwards.

    Idempotent and cheap (one syscall); vLLM may call it more than once per process."""
    if not _is_x86_64_linux() or not has_amx():
        return False
    status = _arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    if status != 0:
        # e.g. a kernel built without AMX support: vLLM may still pick its AMX kernel and die, so say why
        logger.warning("AMX tile permission refused (errno %d); vLLM's AMX kernels may crash this process", -status)
        return False
    return amx_permitted()


def register() -> None:
    """The entry point vLLM calls in each of its processes."""
    request_amx_permission()
