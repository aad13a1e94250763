"""CPU flags and what they decide (serve_apps/cpu_features.py), and engine dtypes resolved from them."""

from __future__ import annotations

import yaml

from serve_apps.checks import builtin_models
from serve_apps.config import EngineConfig
from serve_apps.cpu_features import cpu_flags, cpu_native_dtype, has_amx, parse_cpu_flags
from serve_apps.engines.vllm import build_vllm_args
from serve_apps.profiles import build_config


def test_cpu_flags_are_read_from_the_flags_line():
    intel = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\nvmx flags\t: ept\n"
    amd = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n"
    assert has_amx(parse_cpu_flags(intel)) and not has_amx(parse_cpu_flags(amd))
    assert not has_amx(parse_cpu_flags("vmx flags\t: amx_tile\n"))  # not the CPU's flags line
    assert parse_cpu_flags("") == frozenset()
    assert cpu_native_dtype(parse_cpu_flags(intel)) == "bfloat16" == cpu_native_dtype(parse_cpu_flags(amd))
    assert cpu_native_dtype(parse_cpu_flags("flags\t: fpu avx2 fma\n")) == "float32"  # AVX2 only: emulated bf16


def test_cpu_native_dtype_resolves_on_this_machine_and_only_on_cpu():
    native = "bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"
    assert EngineConfig(dtype="cpu-native").engine_dtype() == native
    assert EngineConfig(dtype="cpu-native", device="gpu").engine_dtype() == "auto"
    assert EngineConfig(dtype="float16").engine_dtype() == "float16"
    args = build_vllm_args(EngineConfig(dtype="cpu-native"), "/some/model")
    assert args.dtype == native


def test_local_profile_serves_smollm2_natively_and_local_tiny_the_tiny_model():
    local, tiny = build_config("local"), build_config("local-tiny")
    assert builtin_models(local) == ["smollm2-135m-instruct"] and builtin_models(tiny) == ["tiny-chat"]
    (engine,) = local["applications"][0]["args"]["engines"]
    assert engine["name"] == "smollm2" and engine["dtype"] == "cpu-native"
    assert yaml.safe_dump(tiny["applications"][0]["args"]["router"]) == yaml.safe_dump(
        local["applications"][0]["args"]["router"])  # same door, only the model differs
