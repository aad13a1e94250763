"""``ray-serve-cai model build [NAME]`` and ``model list``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "ray_serve_cai"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_build_help_names_the_builtins_and_the_default():
    result = run("model", "build", "--help")
    assert result.returncode == 0, result.stderr
    assert "(default: tiny-chat)" in result.stdout
    assert "tiny-chat " in result.stdout and "smollm2-135m-instruct " in result.stdout


def test_unknown_name_is_one_line_and_exit_2(tmp_path: Path):
    result = run("model", "build", "gpt-5", "--cache-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ray-serve-cai: error: unknown built-in model 'gpt-5'; known: tiny-chat, smollm2-135m-instruct"]
    assert result.stdout == "" and not any(tmp_path.iterdir())


def test_build_and_list_a_built_model(smollm2_model):
    cache = smollm2_model.path.parent
    stamp = (smollm2_model.path / "model.safetensors").stat().st_mtime_ns
    result = run("model", "build", "smollm2-135m-instruct", "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{smollm2_model.path}\n"
    provenance = [line for line in result.stderr.splitlines() if line.startswith("provenance: ")]
    assert json.loads(provenance[0].removeprefix("provenance: "))["source"]["version"] == "0.1.2"
    assert (smollm2_model.path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt

    listing = run("model", "list", "--cache-dir", str(cache))
    assert listing.returncode == 0, listing.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1:3] for line in listing.stdout.splitlines()}
    assert rows == {"tiny-chat": ["not built", str(cache / "tiny-chat")],
                    "smollm2-135m-instruct": ["built", str(smollm2_model.path)]}
