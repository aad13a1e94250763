"""The vLLM plugin that requests AMX tile permission (serve_apps/vllm_plugin.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from serve_apps import vllm_plugin
from serve_apps.cpu_features import has_amx
from serve_apps.vllm_plugin import XFEATURE_XTILEDATA

ROOT = Path(__file__).resolve().parents[2]
HAS_AMX = has_amx()


def _python(code: str, marker: str = "", **env: str) -> str:
    """The last line of stdout starting with ``marker`` (vLLM logs to stdout too)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(marker)]
    return lines[-1].removeprefix(marker)


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (arch_prctl)")
def test_permission_is_granted_exactly_where_the_cpu_has_amx():
    # a fresh process: permission, once granted, cannot be taken back
    before, granted, after = json.loads(_python(
        "import json; from serve_apps import vllm_plugin as v; "
        "b = v.permitted_xfeatures(); g = v.request_amx_permission(); "
        "print(json.dumps([b, g, v.permitted_xfeatures()]))"))
    assert before is not None and before & 0b11 == 0b11  # x87 and SSE state: the call itself works
    assert granted is HAS_AMX
    assert bool(after >> XFEATURE_XTILEDATA & 1) is HAS_AMX
    assert vllm_plugin.request_amx_permission() is HAS_AMX  # idempotent, also in this process


def test_vllm_loads_the_plugin_in_its_general_group():
    (ours,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ray_serve_cai_amx"]
    assert ours.load() is vllm_plugin.register
    # vLLM's own loader (it runs in the API server, the EngineCore and every worker) finds and calls it
    granted = _python("import vllm.plugins as p; p.load_general_plugins(); "
                      "from serve_apps.vllm_plugin import amx_permitted; print(amx_permitted())")
    assert granted == str(HAS_AMX)


@pytest.mark.engine
@pytest.mark.skipif(not HAS_AMX, reason="needs a CPU with AMX (amx_tile in /proc/cpuinfo)")
def test_engine_worker_process_holds_amx_permission_and_generates(tmp_path):
    """The process that crashed with SIGILL before the fix: vLLM's worker, here in its own EngineCore
    process (multiprocessing on), on the bf16 tiny model whose attention vLLM runs on AMX kernels."""
    from serve_apps.models import ensure_tiny_model

    code = f"""
import json, os
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model={str(ensure_tiny_model())!r}, enforce_eager=True, dtype="bfloat16",
              worker_extension_cls="tests.serve_apps.amx_probe.AmxProbe")
    out = llm.generate(["hello"] * 4, SamplingParams(max_tokens=8, ignore_eos=True))
    (pid, mask), = llm.collective_rpc("xcomp_permissions")
    print("PROBE", json.dumps([os.getpid(), pid, mask, [len(o.outputs[0].token_ids) for o in out]]), flush=True)
"""
    script = tmp_path / "probe.py"
    script.write_text(code)
    line = _python(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')", "PROBE ",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="1")
    driver, worker, mask, lengths = json.loads(line)
    assert worker != driver  # read inside the worker's own process
    assert mask >> XFEATURE_XTILEDATA & 1, f"worker may not use AMX tiles: {mask:#x}"
    assert lengths == [8] * 4
