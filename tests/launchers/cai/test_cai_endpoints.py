"""Where a serve config answers on a CML cluster (``ClusterInfo.serve``), read from the project's own
serve configs with the models that validate them: the router listener is the front door, all
interfaces mean the head's address, Serve's proxy only when the config keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launchers.cai.endpoints import serve_endpoints
from launchers.cai.errors import CAIError

CONFIGS = Path(__file__).resolve().parents[3] / "serve_configs"


def test_kcl1_dev_front_door_on_all_interfaces_is_the_head() -> None:
    found = serve_endpoints(CONFIGS / "kcl1-dev.yaml", "10.42.0.7")
    assert [(d.app, d.url, d.metrics_url) for d in found.front_doors] == [
        ("router", "http://10.42.0.7:8001/v1", "http://10.42.0.7:8001/metrics")]
    assert found.serve_proxy_url == "http://10.42.0.7:8000"


def test_local_profile_has_its_loopback_door_and_no_proxy() -> None:
    found = serve_endpoints(CONFIGS / "local.yaml", "10.42.0.7")
    assert [d.url for d in found.front_doors] == ["http://127.0.0.1:8000/v1"]
    assert found.serve_proxy_url is None  # proxy_location: Disabled


def test_serve_defaults_apply_and_user_apps_have_no_door(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "hello", "import_path": "hello_app:app"}]}))
    found = serve_endpoints(path, "fd00::5")
    assert found.front_doors == []
    assert found.serve_proxy_url == "http://[fd00::5]:8000"  # Serve's defaults: all interfaces, :8000


def test_bad_router_args_name_the_key(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "kcl1-dev.yaml").read_text())
    raw["applications"][0]["args"]["router"]["listen"]["port"] = 0
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CAIError, match=r"app 'router'.*router\.listen\.port"):
        serve_endpoints(path, "10.42.0.7")


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CAIError, match="cannot read serve config"):
        serve_endpoints(tmp_path / "nope.yaml", "10.42.0.7")
