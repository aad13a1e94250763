"""Pure parts of ``loadtests/upstack.py`` (what the benchmarks that start ``ray-serve-cai up`` share):
reading ``up``'s progress lines and moving a config's ports. (The benchmarks themselves are run by hand
or by ``ray-serve-cai bench``; benchmarks are not tests.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from loadtests.upstack import moved_to_free_ports, startup_phases

ROOT = Path(__file__).resolve().parents[2]


def test_startup_phases_read_ups_own_progress_lines():
    log = ("[up   0.0s] starting Ray head on 127.0.0.1:1 (logs: /tmp/x)\n"
           "[up   9.5s] deploying serve_configs/local.yaml\n"
           "[up  12.0s] waiting for the engine to load and answer a first generation (1-2 min on CPU)...\n"
           "[up  30.0s] router: DEPLOYING ()\n")
    assert startup_phases(log, 61.0) == {"ray_head_s": 9.5, "deploy_s": 2.5, "engine_and_first_generation_s": 49.0}
    assert startup_phases("ray-serve-cai: error: config file not found\n", 1.0) == {}


def test_moved_config_keeps_everything_but_its_ports(tmp_path):
    shipped = ROOT / "serve_configs" / "local.yaml"
    moved = yaml.safe_load(moved_to_free_ports(shipped, tmp_path).read_text())
    original = yaml.safe_load(shipped.read_text())
    listen = moved["applications"][0]["args"]["router"]["listen"]
    assert listen["port"] != original["applications"][0]["args"]["router"]["listen"]["port"]
    assert moved["http_options"]["port"] != original["http_options"]["port"]
    listen["port"] = original["applications"][0]["args"]["router"]["listen"]["port"]
    moved["http_options"]["port"] = original["http_options"]["port"]
    moved["grpc_options"]["port"] = original["grpc_options"]["port"]
    assert moved == original
