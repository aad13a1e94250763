"""The one serve-config generator: shipped files are its output, its skeleton is Serve's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve_apps import profiles

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "serve_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_is_the_generator_output(path: Path):
    assert path.stem in profiles.PROFILES, f"{path.name} has no profile in serve_apps/profiles.py"
    assert path.read_text() == profiles.render(path.stem), (
        f"{path.name} differs from its profile: run `python -m serve_apps.profiles {path.stem}`")


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_profile_is_shipped_and_quiet(name: str):
    assert (ROOT / "serve_configs" / f"{name}.yaml").exists()
    config = profiles.build_config(name)
    assert config["logging_config"]["enable_access_log"] is False
    assert [app["import_path"] for app in config["applications"]] == [profiles.PROFILES[name]["import_path"]]


def test_build_config_returns_a_fresh_dict():
    first = profiles.build_config("local")
    first["applications"][0]["args"]["router"]["listen"]["port"] = 1
    first["http_options"]["port"] = 1
    assert profiles.build_config("local") != first


def test_unknown_profile_is_named():
    with pytest.raises(KeyError, match="nope"):
        profiles.build_config("nope")
    assert profiles.main(["nope"]) == 2


def test_bad_profile_args_are_refused(monkeypatch: pytest.MonkeyPatch):
    broken = {**profiles.PROFILES["gpu"], "args": {"name": "x", "dtyp": "auto"}}
    monkeypatch.setitem(profiles.PROFILES, "broken", broken)
    with pytest.raises(ValueError, match="dtyp"):
        profiles.build_config("broken")


def test_skeleton_is_what_serve_build_emits(tmp_path: Path):
    """Serve's defaults around the applications; if a Ray upgrade changes them, update SKELETON."""
    (tmp_path / "bound_app.py").write_text("from serve_apps.apps import build_app\napp = build_app({})\n")
    out = tmp_path / "skeleton.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    serve = Path(sys.executable).parent / "serve"
    subprocess.run([str(serve), "build", "bound_app:app", "-o", str(out)], check=True, capture_output=True,
                   env=env, cwd=tmp_path, timeout=120)
    built = yaml.safe_load(out.read_text())
    built.pop("applications")
    # the deliberate changes: no access log, and loopback unless a profile says otherwise
    built["logging_config"]["enable_access_log"] = False
    built["http_options"]["host"] = "127.0.0.1"
    assert built == profiles.SKELETON
