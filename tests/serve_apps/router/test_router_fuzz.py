"""schemathesis (the real CLI, as an API fuzzer user would run it) against the router's own OpenAPI
document, on both doors of a live router in front of the session's real vLLM engine: no 5xx, every
status, content type and JSON body as the document says, a method no route documents answered 405 with
``Allow`` (``unsupported_method``), no request slower than its timeout.

Bounded: a time budget per door and a cap on examples per operation."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from launchers.local import free_port
from tests.conftest import MODEL, write_serve_config

pytestmark = pytest.mark.engine
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "unsupported_method")
MAX_RESPONSE_S = 60


@pytest.fixture(scope="module")
def doors(serve_stack, tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("router-fuzz")
    port = int(serve_stack.base_url.rsplit(":", 1)[1])
    config = yaml.safe_load(write_serve_config(tmp / "base.yaml", port, serve_stack.ready_file).read_text())
    listen = free_port()
    config["applications"].append({
        "name": "fuzz", "route_prefix": "/fuzz", "import_path": "serve_apps.router.app:build_router_app",
        # batch off: fuzzed batches would start real jobs whose load on the one engine slows every other
        # request past its timeout; the batch routes are tested through the openai SDK in tests/serve_apps/batch
        "args": {"router": {"listen": {"host": "127.0.0.1", "port": listen}}, "batch": {"enabled": False},
                 "backends": [{"name": "replica", "kind": "serve", "app": "llm", "deployment": f"engine-{MODEL}",
                               "models": [MODEL], "timeouts": {"first_byte": 30, "idle": 30}}]}})
    path = tmp / "with-fuzz.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_stack.cluster.deploy(path)
    doors = {"listener": f"http://127.0.0.1:{listen}", "serve": f"{serve_stack.base_url}/fuzz"}
    for url in doors.values():
        serve_stack.cluster.wait_ready(f"{url}/health", timeout_s=180)
    return doors


def fuzz(url: str, report_dir: Path, seconds: int) -> tuple[Counter, list[str], str]:
    """Run the CLI; return (status counts, failure descriptions, seed)."""
    report = report_dir / "events.ndjson"
    subprocess.run([str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--url", url, "--checks", CHECKS,
                    "--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", str(MAX_RESPONSE_S + 30),
                    "--max-examples", "25", "--max-time", str(seconds), "--workers", "2", "--no-color",
                    "--report", "ndjson", "--report-ndjson-path", str(report)],
                   capture_output=True, text=True, timeout=seconds + 240)
    statuses: Counter = Counter()
    failures: list[str] = []
    seed = "?"
    for line in report.read_text().splitlines():
        event = json.loads(line)
        if "Initialize" in event:
            seed = str(event["Initialize"].get("seed"))
        recorder = event.get("ScenarioFinished", {}).get("recorder") or {}
        interactions = recorder.get("interactions") or {}
        for interaction in interactions.values():
            response = interaction.get("response") or {}
            statuses[response.get("status_code")] += 1
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") != "success":
                    failures.append(_describe(check, interactions.get(case_id) or {}))
    return statuses, failures, seed


def _describe(check: dict, interaction: dict) -> str:
    request, response = interaction.get("request") or {}, interaction.get("response") or {}
    body = (request.get("body") or {}).get("$base64")
    answer = (response.get("content") or {}).get("$base64")
    sent = base64.b64decode(body)[:400] if body else None
    got = base64.b64decode(answer)[:300] if answer else None
    return (f"{check.get('name')}: {request.get('method')} {request.get('uri')} -> {response.get('status_code')}\n"
            f"  sent {sent!r}\n  got {got!r}")


@pytest.mark.parametrize("door,seconds", [("listener", 75), ("serve", 30)])
def test_fuzzing_the_document_finds_no_5xx_and_no_departure_from_it(doors, tmp_path, door, seconds):
    statuses, failures, seed = fuzz(doors[door], tmp_path, seconds)
    print(f"\n{door}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items(), key=str))}, seed {seed}")
    assert sum(statuses.values()) >= 100, f"too few requests to mean anything: {statuses}"
    assert not any(isinstance(s, int) and s >= 500 for s in statuses), f"5xx seen (seed {seed}): {failures[:3]}"
    assert not failures, f"{len(failures)} failed checks (seed {seed}):\n" + "\n".join(failures[:5])
