"""SGLang: argument building is checked everywhere; real generation only where a GPU exists."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from serve_apps.config import EngineConfig
from serve_apps.engines.sglang import SGLangEngine, build_sglang_kwargs


def test_kwargs_map_engine_config_fields():
    config = EngineConfig(name="m", model="/models/m", engine="sglang", device="gpu", dtype="bfloat16",
                          max_model_len=4096, tensor_parallel_size=2, engine_kwargs={"mem_fraction_static": 0.8})
    kwargs = build_sglang_kwargs(config, "/models/m")
    assert kwargs == {"model_path": "/models/m", "served_model_name": "m", "tp_size": 2, "device": "cuda",
                      "dtype": "bfloat16", "context_length": 4096, "disable_cuda_graph": True,
                      "mem_fraction_static": 0.8}


def test_auto_dtype_and_no_length_are_left_to_sglang():
    kwargs = build_sglang_kwargs(EngineConfig(engine="sglang", enforce_eager=False), "/m")
    assert "dtype" not in kwargs and "context_length" not in kwargs and "disable_cuda_graph" not in kwargs


def _has_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU: SGLang's kernels are CUDA-only")
def test_real_generation_on_gpu():
    import asyncio

    pytest.importorskip("sglang", reason="needs the sglang extra")

    async def run() -> str:
        engine = SGLangEngine(EngineConfig(engine="sglang", device="gpu"))
        await engine.start()
        try:
            response = await engine.chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            return (await response.read()).decode()
        finally:
            await engine.shutdown()

    assert "chat.completion" in asyncio.run(run())
