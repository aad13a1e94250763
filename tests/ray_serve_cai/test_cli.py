"""The one CLI: every subcommand has --help, and failures are one readable line with exit != 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ray_serve_cai.cli import build_parser

CLI = [sys.executable, "-m", "ray_serve_cai"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_has_help():
    commands = list(_subcommands(build_parser()))
    assert ("up",) in commands and ("model", "build") in commands
    for command in commands:
        result = run(*command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage:" in result.stdout and len(result.stdout.splitlines()) >= 3


def test_missing_config_is_one_line_error(tmp_path: Path):
    result = run("up", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"ray-serve-cai: error: config file not found: {tmp_path / 'nope.yaml'}"]


def test_invalid_yaml_is_one_line_error(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: [\n")
    result = run("up", "--config", str(bad))
    assert result.returncode == 1
    assert "is not valid YAML" in result.stderr and "Traceback" not in result.stderr


def test_model_build_prints_the_directory(tmp_path: Path):
    result = run("model", "build", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == tmp_path and (path / "config.json").exists()


@pytest.mark.parametrize("argv", [["frobnicate"], []])
def test_unknown_or_missing_command_exits_2(argv):
    assert run(*argv).returncode == 2


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml", "prod.yaml"])
def test_check_accepts_shipped_configs(name):
    result = run("check", str(Path(__file__).resolve().parents[2] / "serve_configs" / name))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("application(s))")


def test_check_names_the_bad_key(tmp_path: Path):
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml").read_text())
    config["applications"][0]["args"]["engines"][0]["kv_cache_gbb"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = run("check", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "engines.0.kv_cache_gbb" in lines[0] and "router" in lines[0]


def test_check_refuses_listener_port_clashes(tmp_path: Path):
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml").read_text())
    second = {**config["applications"][0], "name": "router2", "route_prefix": "/two"}
    config["applications"].append(second)  # same listener port as the first app
    path = tmp_path / "clash.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run("check", str(path))
    assert result.returncode == 1
    assert "app 'router2': router.listen.port 8000 is also app 'router''s listener" in result.stderr
    config["applications"] = config["applications"][:1]
    config["applications"][0]["args"]["router"]["listen"]["port"] = config["http_options"]["port"]
    path.write_text(yaml.safe_dump(config))
    result = run("check", str(path))
    assert result.returncode == 1 and "is Serve's http_options.port" in result.stderr


def test_up_refuses_a_busy_port_at_once(tmp_path: Path):
    import socket

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_configs" / "local.yaml").read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config["applications"][0]["args"]["router"]["listen"]["port"] = busy.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump(config))
        result = run("up", "--config", str(path))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr and "router.listen.port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_up_takes_a_port_whose_old_connections_linger_in_time_wait():
    """Restarting `up` right after stopping it: the door's port still has connections in TIME_WAIT
    (the server closed them first), which the listener's SO_REUSEADDR allows; so must the check."""
    import socket

    from ray_serve_cai.commands.local import _ensure_ports_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the check did before: the port looked busy
    config = {"proxy_location": "Disabled", "applications": [
        {"name": "router", "args": {"router": {"listen": {"host": "127.0.0.1", "port": port}}}}]}
    _ensure_ports_free(config)
