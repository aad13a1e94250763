"""Fuzz the CML emulator with schemathesis against the vendored OpenAPI 3 document (specs/cml).

Every emulated operation gets valid and invalid requests (positive and negative generation); checks:
no 5xx, status codes and response bodies conform to the document. Bounded: ``MAX_EXAMPLES`` per
operation (19 operations, ~2,400 requests, ~25 s here). Most cases name the ids of real objects so
the handlers run, not only the "not found" path.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from cml_emulator import RUNTIME, CMLEmulator
from cml_emulator.handlers import HANDLERS
from cml_emulator.store import Timing
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

REPO = Path(__file__).resolve().parents[3]
MAX_EXAMPLES = 50


def _document() -> dict:
    """The vendored document with grpc-gateway's dotted path variables (``{job.id}``) renamed
    (``{job_id}``): schemathesis formats path templates with ``str.format``, which reads a dot as an
    attribute access. The URLs it produces are the same."""
    text = (REPO / "specs" / "cml" / "openapi3.json").read_text()
    dotted = set(re.findall(r"\{([a-z_]+\.[a-z_.]+)\}", text))
    document = json.loads(text)
    for template in list(document["paths"]):
        item = document["paths"].pop(template)
        for operation in item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param.get("in") == "path" and param["name"] in dotted:
                    param["name"] = param["name"].replace(".", "_")
        renamed = re.sub(r"\{([^}]+)\}", lambda m: "{" + m[1].replace(".", "_") + "}", template)
        document["paths"].setdefault(renamed, {}).update(item)  # PATCH .../{job.id} joins GET .../{job_id}
    return document


SCHEMA = schemathesis.openapi.from_dict(_document()).include(operation_id=sorted(HANDLERS))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


class Target:
    """The emulator under fuzzing and the ids of real objects in it."""

    def __init__(self, cml: CMLEmulator) -> None:
        self.cml = cml
        self.auth = {"Authorization": f"Bearer {cml.api_key}"}
        self.ids = {"project_id": cml.add_project("fuzz")}
        cml.write(self.ids["project_id"], "exits.py")
        with cml.store.lock:
            from cml_emulator.handlers import create_application, create_job
            job = create_job(cml.store, self.ids["project_id"], {"name": "j", "script": "exits.py",
                                                                  "runtime_identifier": RUNTIME})
            run = cml.store.create_run(self.ids["project_id"], job["id"])
            app = create_application(cml.store, self.ids["project_id"],
                                     {"name": "a", "subdomain": "a", "script": "exits.py",
                                      "runtime_identifier": RUNTIME})
        self.ids |= {"job_id": job["id"], "run_id": run["id"], "application_id": app["id"]}
        self.turn = itertools.count()

    def aim(self, case: schemathesis.Case) -> None:
        """Three cases in four name existing objects; the fourth keeps the generated ids."""
        if next(self.turn) % 4:
            for name in case.path_parameters or {}:
                if name in self.ids:
                    case.path_parameters[name] = self.ids[name]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    timing = Timing(app_start=0.1, run_schedule=0.1, clone=0.1, stop_grace=1)
    with CMLEmulator(tmp_path_factory.mktemp("cml-fuzz"), timing=timing) as cml:
        yield Target(cml)
        statuses = collections.Counter(call.rsplit(" ", 1)[1] for call in cml.app.calls)
        print(f"\nCML emulator fuzz: {len(cml.app.calls)} requests, statuses {dict(sorted(statuses.items()))}, "
              f"5xx {sum(n for s, n in statuses.items() if s.startswith('5'))}")
        assert cml.app.violations == []


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_emulator_follows_the_spec(case: schemathesis.Case, target: Target) -> None:
    target.aim(case)
    case.call_and_validate(base_url=target.cml.url, headers=target.auth, checks=CHECKS, timeout=10)
