"""Pure parts of ``loadtests/bench_kcl1_fit.py``: what it reads from the rendered kcl1-dev manifests, the
serve config it deploys (kcl1-dev's own, its outside world replaced, nothing else), and the ``ray start``
command lines of its nodes (the manifest's parameters, loopback only). The benchmark itself runs by hand
or under ``ray-serve-cai bench``; benchmarks are not tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.bench_kcl1_fit import Manifests, StandIns, local_config, quantity_mib, read_manifests
from loadtests.ray_nodes import RayNode
from serve_apps.checks import config_problems

STAND = StandIns("http://127.0.0.1:1001", "http://127.0.0.1:1003", "@ray-bot:rsc.test",
                 Path("/tmp/shared"))


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return read_manifests()


def test_quantities() -> None:
    assert (quantity_mib("1Gi"), quantity_mib("1.2Gi"), quantity_mib("512Mi")) == (1024, 1228.8, 512)
    with pytest.raises(ValueError):
        quantity_mib("lots")


def test_reads_the_sizes_and_ray_settings_of_the_manifests(manifests: Manifests) -> None:
    assert (manifests.head_limit_mib, manifests.worker_limit_mib, manifests.workers) == (1024, 1228.8, 2)
    assert manifests.head_params["num-cpus"] == "0" and manifests.worker_params["num-cpus"] == "1"
    assert "object-store-memory" in manifests.head_params and "object-store-memory" in manifests.worker_params
    assert "MATRIX_ACCESS_TOKEN" in manifests.worker_env


def test_local_config_is_kcl1s_with_only_the_outside_world_replaced(manifests: Manifests) -> None:
    config, ports, notes = local_config(manifests.serve_config, STAND)
    assert config_problems(config) == []
    assert "0.0.0.0" not in json.dumps(config) and len(set(ports.values())) == 3
    args, original = config["applications"][0]["args"], manifests.serve_config["applications"][0]["args"]
    assert {b["url"] for b in args["backends"]} == {STAND.backend_url}
    assert [b["kind"] for b in args["backends"]] == ["openai", "openai", "openai", "anthropic"]
    assert args["router"]["num_replicas"] == original["router"]["num_replicas"] == 2
    assert args["matrix"]["homeserver"] == STAND.homeserver and args["matrix"]["key"] == original["matrix"]["key"]
    assert args["batch"]["storage"] == "/tmp/shared/batch"
    assert len(notes) == 7  # ports, four backends, homeserver, batch storage: every change is named
    assert manifests.serve_config["applications"][0]["args"]["backends"][0]["url"].startswith("http://rocket-")


def test_node_commands_carry_the_manifests_params_on_loopback(tmp_path: Path, manifests: Manifests) -> None:
    head = RayNode("head", "127.0.0.1", manifests.head_params, {}, tmp_path / "head")
    worker = RayNode("worker-1", "127.0.0.2", manifests.worker_params, {}, tmp_path / "w1", head_address=head.address)
    head_cmd, worker_cmd = head.command(), worker.command()
    assert "--head" in head_cmd and worker_cmd[worker_cmd.index("--address") + 1] == head.address
    for cmd, params in ((head_cmd, manifests.head_params), (worker_cmd, manifests.worker_params)):
        assert "0.0.0.0" not in cmd
        assert cmd[cmd.index("--object-store-memory") + 1] == params["object-store-memory"]
        assert cmd[cmd.index("--num-cpus") + 1] == params["num-cpus"]
        assert cmd[cmd.index("--metrics-export-port") + 1] != "8080"  # a free port: three nodes, one host
        assert cmd.count("--num-gpus") == 1
    assert head_cmd[head_cmd.index("--dashboard-host") + 1] == "127.0.0.1"
