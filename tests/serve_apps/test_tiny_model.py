from __future__ import annotations

import json

from serve_apps.models.tiny import TINY_MODEL_NAME, ensure_tiny_model, fingerprint


def test_builds_are_byte_identical(tmp_path):
    first = ensure_tiny_model(tmp_path / "a")
    second = ensure_tiny_model(tmp_path / "b")
    assert fingerprint(first) == fingerprint(second)
    config = json.loads((first / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # CPU attention kernels
    tokenizer = json.loads((first / "tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|im_end|>"
    assert first.name == TINY_MODEL_NAME


def test_cached_build_is_reused(tmp_path):
    path = ensure_tiny_model(tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_chat_template_renders_chatml(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model(tmp_path))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
