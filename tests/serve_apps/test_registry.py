from __future__ import annotations

import pytest

from serve_apps.engines import Engine, UnknownEngineError, get_registry, register_engine
from serve_apps.engines.registry import EngineRegistry


def test_builtins_are_registered_without_importing_them():
    import subprocess
    import sys

    code = ("import sys; from serve_apps.engines import get_registry; names = get_registry().names(); "
            "print(names, 'vllm' in sys.modules, 'sglang' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sglang', 'vllm'] False False"


def test_unknown_engine_lists_known_ones():
    with pytest.raises(UnknownEngineError) as exc_info:
        EngineRegistry().get("tensorrt")
    assert "tensorrt" in str(exc_info.value)
    assert "vllm" in str(exc_info.value) and "sglang" in str(exc_info.value)


def test_register_custom_engine_class():
    from tests.serve_apps.echo_engine import EchoEngine

    registry = EngineRegistry()
    registry.register("echo", EchoEngine)
    assert registry.get("echo") is EchoEngine
    with pytest.raises(ValueError, match="already registered"):
        registry.register("echo", EchoEngine)
    registry.register("echo", EchoEngine, replace=True)


def test_import_path_works_without_registering():
    from tests.serve_apps.echo_engine import EchoEngine

    assert EngineRegistry().get("tests.serve_apps.echo_engine:EchoEngine") is EchoEngine


def test_bad_import_path_is_a_clear_error():
    with pytest.raises(ImportError, match="no_such_module"):
        EngineRegistry().get("no_such_module:Thing")


def test_global_register_engine_and_seed_import_path():
    from ray_serve_cai.engines import get_registry as seed_get_registry
    from tests.serve_apps.echo_engine import EchoEngine

    register_engine("echo-global", EchoEngine, replace=True)
    assert seed_get_registry() is get_registry()
    assert get_registry().get("echo-global") is EchoEngine


def test_builtin_vllm_engine_satisfies_protocol():
    from serve_apps.config import EngineConfig

    engine = get_registry().get("vllm")(EngineConfig())
    assert isinstance(engine, Engine)
