"""The CML API contract, read from the vendored Swagger file (specs/cml): routing and validation.

The real API (grpc-gateway over protobuf) refuses wrong JSON types: int64 fields must be decimal
strings and int32 fields must fit. It discards unknown fields (the gateway's default): requests are
checked against strict schemas (``additionalProperties: false``) only to find and drop them.
Responses must match the strict schemas exactly: the emulator may not invent fields. Free-form maps
(``environment`` on create) stay open.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, ValidationError

REPO = Path(__file__).resolve().parents[4]
SPEC_PATH = REPO / "specs" / "cml" / "swagger.json"
INT32 = (-(2**31), 2**31 - 1)


@dataclass
class Operation:
    op_id: str
    method: str
    template: str
    regex: re.Pattern[str]
    query: dict[str, dict] = field(default_factory=dict)
    body_schema: dict | None = None
    form: bool = False
    response_schema: dict | None = None


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        if out.get("type") == "string" and out.get("format") == "int64":
            out["pattern"] = r"^-?[0-9]+$"
        if out.get("type") == "integer" and out.get("format") == "int32":
            out["minimum"], out["maximum"] = INT32
        out.pop("readOnly", None)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


class Spec:
    """Operations of the Swagger file, matched on the *raw* path (colon verbs, %2F in ``{path}``)."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        raw = json.loads(path.read_text())
        self.definitions = _strict(copy.deepcopy(raw["definitions"]))
        self.operations: list[Operation] = []
        for template, item in raw["paths"].items():
            for method, op in item.items():
                if method == "parameters":
                    continue
                self.operations.append(self._operation(template, method.upper(), op))
        # Literal paths before templated ones (":stop" must not be read as part of an id).
        self.operations.sort(key=lambda o: (o.template.count("{"), -len(o.template)))

    def _operation(self, template: str, method: str, op: dict) -> Operation:
        pattern = re.sub(r"\\\{[^}]+\\\}", "([^/:]+)", re.escape(template))
        operation = Operation(op["operationId"], method, template, re.compile(f"^{pattern}$"))
        for param in op.get("parameters", []):
            if param["in"] == "query":
                operation.query[param["name"]] = param
            elif param["in"] == "body":
                operation.body_schema = self._schema(param["schema"])
            elif param["in"] == "formData":
                operation.form = True
        ok = op.get("responses", {}).get("200", {})
        if "schema" in ok:
            operation.response_schema = self._schema(ok["schema"])
        return operation

    def _schema(self, schema: dict) -> dict:
        return {**_strict(schema), "definitions": self.definitions}

    def match(self, method: str, raw_path: str) -> tuple[Operation, list[str]] | None:
        for op in self.operations:
            if op.method == method and (m := op.regex.match(raw_path)):
                return op, list(m.groups())
        return None

    def request_errors(self, op: Operation, query: list[tuple[str, str]], body: Any) -> tuple[list[str], list[str]]:
        """(problems that make a 400, unknown fields and parameters dropped from ``body`` in place)."""
        errors, ignored = [], []
        for name, value in query:
            param = op.query.get(name)
            if param is None:
                ignored.append(f"query parameter {name!r}")
            elif param["type"] == "integer" and not re.fullmatch(r"-?[0-9]+", value):
                errors.append(f"query parameter {name!r}: {value!r} is not an integer")
            elif param.get("format") == "int32" and not INT32[0] <= int(value) <= INT32[1]:
                errors.append(f"query parameter {name!r}: {value} is out of the int32 range")
            elif param["type"] == "boolean" and value not in ("true", "false"):
                errors.append(f"query parameter {name!r}: {value!r} is not a boolean")
        if op.body_schema is not None:
            if body is None:
                errors.append("request body required")
            else:
                for problem in list(Draft4Validator(op.body_schema).iter_errors(body)):
                    if problem.validator == "additionalProperties" and isinstance(problem.instance, dict):
                        known = problem.schema.get("properties", {})
                        ignored += [f"body field {k!r}" for k in sorted(set(problem.instance) - set(known))]
                        for key in set(problem.instance) - set(known):
                            del problem.instance[key]
                    else:
                        errors.append(_describe(problem, "body"))
        elif body not in (None, b"") and not op.form:
            errors.append(f"{op.op_id} takes no request body")
        return errors, ignored

    def response_errors(self, op: Operation, body: Any) -> list[str]:
        if op.response_schema is None:
            return []
        return _schema_errors(op.response_schema, body, "response")


def _describe(problem: ValidationError, where: str) -> str:
    return f"{where}{''.join(f'.{p}' for p in problem.absolute_path)}: {problem.message}"


def _schema_errors(schema: dict, instance: Any, where: str) -> list[str]:
    return [_describe(e, where) for e in Draft4Validator(schema).iter_errors(instance)]
