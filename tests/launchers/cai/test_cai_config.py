"""Cluster config: validation names the bad key, env overrides, secrets hidden,
head without GPUs; the node contract the launcher script reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launchers.cai import nodes
from launchers.cai.config import load_config
from launchers.cai.errors import CAIError

SECRET = "sk-cml-very-secret-0123456789"
BASE = {"cai": {"host": "https://ml.example.cloudera.site/", "project_id": "abcd-1234",
                "num_workers": 2, "resources": {"cpu": 16, "memory": 64, "num_gpus": 1},
                "head_resources": {"cpu": 8, "memory": 32}}}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_seed_example_loads_with_key_from_env(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), env={"CML_API_KEY": SECRET})
    assert config.cai.host == "https://ml.example.cloudera.site"
    assert config.api_key() == SECRET
    assert (config.ray.port, config.ray.dashboard_port) == (6379, 8265)
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()


def test_head_never_gets_gpus_and_defaults_to_worker_size(tmp_path: Path) -> None:
    data = {"cai": {**BASE["cai"], "head_resources": {}}}
    config = load_config(write(tmp_path, data), env={"CML_API_KEY": SECRET})
    head, *workers = nodes.desired_specs(config)
    assert (head.cpu, head.memory, head.gpus) == (16, 64, 0)
    assert [(w.name, w.gpus) for w in workers] == [("ray-cluster-worker-1", 1), ("ray-cluster-worker-2", 1)]
    data["cai"]["head_resources"] = {"num_gpus": 1}
    with pytest.raises(CAIError, match=r"cai\.head_resources\.num_gpus: Extra inputs are not permitted"):
        load_config(write(tmp_path, data), env={})


def test_env_overrides(tmp_path: Path) -> None:
    env = {"RAY_NUM_WORKERS": "5", "RAY_WORKER_GPUS": "2", "RUNTIME_IDENTIFIER": "docker.example/rt:1",
           "CML_API_KEY": SECRET}
    config = load_config(write(tmp_path, BASE), env=env)
    assert (config.cai.num_workers, config.cai.resources.num_gpus) == (5, 2)
    assert config.cai.runtime_identifier == "docker.example/rt:1"


def test_inside_cml_everything_comes_from_the_workload(tmp_path: Path) -> None:
    env = {"CDSW_API_URL": "https://ml.example.site/api/v1", "CDSW_APIV2_KEY": SECRET, "CDSW_PROJECT_ID": "p-1"}
    config = load_config(write(tmp_path, {"cai": {"num_workers": 1}}), env=env)
    assert (config.cai.host, config.cai.project_id, config.api_key()) == ("https://ml.example.site", "p-1", SECRET)


@pytest.mark.parametrize("change, key", [
    ({"num_workers": -1}, "cai.num_workers"),
    ({"resources": {"cpu": 0}}, "cai.resources.cpu"),
    ({"host": "ml.example.com"}, "cai.host"),
    ({"cluster_name": "Ray_Cluster"}, "cai.cluster_name"),
    ({"num_wrkers": 3}, "cai.num_wrkers"),
])
def test_errors_name_the_bad_key(tmp_path: Path, change: dict, key: str) -> None:
    with pytest.raises(CAIError) as info:
        load_config(write(tmp_path, {"cai": {**BASE["cai"], **change}}), env={"CML_API_KEY": SECRET})
    assert f"{key}:" in str(info.value)


def test_bad_api_key_value_is_not_echoed(tmp_path: Path) -> None:
    data = {"cai": {**BASE["cai"], "api_key": {"value": SECRET}}}
    with pytest.raises(CAIError, match=r"cai\.api_key") as info:
        load_config(write(tmp_path, data), env={})
    assert SECRET not in str(info.value)


def test_missing_key_and_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), env={})
    with pytest.raises(CAIError, match="no CML API key for https://ml.example.cloudera.site"):
        config.api_key()
    with pytest.raises(CAIError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml", env={})
    with pytest.raises(CAIError, match="top level must be a mapping"):
        load_config(write(tmp_path, ["cai"]), env={})


def test_launcher_upload_path_follows_content() -> None:
    path, content = nodes.launcher_script()
    assert path.startswith(".ray-serve-cai/launchers/ray_node-") and path.endswith(".py")
    assert b"RAY_CAI_ROLE" in content
    compile(content, path, "exec")


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, {"cai": {**BASE["cai"], "num_workers": "many"}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CML_", "CDSW_", "RAY_"))}
    done = subprocess.run([sys.executable, "-m", "ray_serve_cai", "cai", "start", "--config", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"ray-serve-cai: error: config {bad}: cai.num_workers: Input should be a valid integer, "
        "unable to parse string as an integer"]


def test_launchers_stay_light_and_apart() -> None:
    """The CLI path imports neither Ray, vLLM nor the serve apps (launchers never reach into them); the
    one shared piece is the strict config base and its error formatter (``serve_apps.validation``)."""
    code = ("import sys, launchers.cai.cli, launchers.cai.cluster, launchers.cai.pipeline; "
            "shared = {'serve_apps', 'serve_apps.validation'}; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - shared} & {'ray', 'serve_apps', 'vllm', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
