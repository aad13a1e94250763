"""Engine config validation, and every shipped serve config validated against the pydantic models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_apps.apps import ConfigError, parse_engine_config
from serve_apps.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = sorted((ROOT / "serve_configs").glob("*.yaml"))


def test_defaults_serve_the_builtin_tiny_model():
    config = EngineConfig()
    assert config.model == "builtin:tiny-chat"
    assert config.engine == "vllm"
    assert config.max_ongoing_requests > 5  # Serve's default of 5 throttles streams


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as exc_info:
        parse_engine_config({"name": "m", "dtyp": "bfloat16"})
    assert "dtyp" in str(exc_info.value)


def test_wrong_type_is_named_with_its_path():
    with pytest.raises(ConfigError) as exc_info:
        parse_engine_config({"autoscaling": {"min_replicas": "lots"}})
    assert "autoscaling.min_replicas" in str(exc_info.value)


def test_unknown_engine_lists_known_engines():
    with pytest.raises(ConfigError) as exc_info:
        parse_engine_config({"engine": "tensorrt"})
    message = str(exc_info.value)
    assert "tensorrt" in message and "vllm" in message and "sglang" in message


def test_autoscaling_bounds_checked():
    with pytest.raises(ConfigError, match="max_replicas"):
        parse_engine_config({"autoscaling": {"min_replicas": 4, "max_replicas": 2}})


def test_builtin_model_unknown_name():
    with pytest.raises(ValueError, match="unknown built-in model"):
        EngineConfig(model="builtin:gpt-5").resolve_model_path()


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_shipped_serve_config_is_valid(path: Path):
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.checks import validate_app_args

    raw = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications, f"{path.name} has no applications"
    for app in raw["applications"]:
        validate_app_args(app["import_path"], app.get("args") or {})


def test_expected_configs_are_shipped():
    assert {"local.yaml", "gpu.yaml", "prod.yaml"} <= {p.name for p in SERVE_CONFIGS}


def test_local_config_listens_on_loopback_only():
    raw = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    assert raw["http_options"]["host"] == "127.0.0.1"
