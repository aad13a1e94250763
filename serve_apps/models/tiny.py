"""Build a tiny, random-weight chat model locally and deterministically.

Why: tests, benchmarks and the quick start need a real model that vLLM can load, but no model hub is
reachable. Output is gibberish; token counts, streaming, stop sequences, logprobs and throughput are
real. The same recipe version and seed give the same files, so a cache directory can be reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny-chat"
RECIPE_VERSION = "1"
SEED = 1234
VOCAB_SIZE = 2048
CONTEXT_LENGTH = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and not add_generation_prompt and message['role'] == 'assistant') %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A fixed, version-independent corpus: our own docstrings would drift, so use stable stdlib modules
# that exist in every supported Python. Sorted for determinism.
_CORPUS_MODULES = sorted(["argparse", "json/decoder", "textwrap", "string", "shlex", "heapq", "bisect"])


def default_cache_dir() -> Path:
    """Where built models live: $RAY_SERVE_CAI_CACHE, else ~/.cache/ray-serve-cai."""
    base = os.environ.get("RAY_SERVE_CAI_CACHE") or Path.home() / ".cache" / "ray-serve-cai"
    return Path(base) / "models"


def _corpus_lines() -> list[str]:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    for module in _CORPUS_MODULES:
        lines.extend((stdlib / f"{module}.py").read_text(encoding="utf-8").splitlines())
    return lines


def _build_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=CONTEXT_LENGTH,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def _build_weights(out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out_dir)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 32: the CPU attention kernels need >= 32
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=eos_id,
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos_id,
                     pad_token_id=config.pad_token_id).save_pretrained(out_dir)


def build_tiny_model(out_dir: Path) -> Path:
    """Build the model into ``out_dir`` (replaced atomically). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir.parent))
    try:
        _build_tokenizer(staging)
        _build_weights(staging)
        (staging / "ray_serve_cai_recipe.json").write_text(
            json.dumps({"name": TINY_MODEL_NAME, "recipe": RECIPE_VERSION, "seed": SEED}) + "\n"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _is_complete(path: Path) -> bool:
    marker = path / "ray_serve_cai_recipe.json"
    if not marker.exists() or not (path / "model.safetensors").exists():
        return False
    return json.loads(marker.read_text()).get("recipe") == RECIPE_VERSION


def ensure_tiny_model(cache_dir: Path | None = None, *, rebuild: bool = False) -> Path:
    """Return the tiny model's directory, building it first if it is missing or outdated."""
    path = Path(cache_dir or default_cache_dir()) / TINY_MODEL_NAME
    if rebuild or not _is_complete(path):
        build_tiny_model(path)
    return path


def fingerprint(path: Path) -> str:
    """A digest of the model's files, to show that builds are reproducible."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
