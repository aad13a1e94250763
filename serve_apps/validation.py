"""The one strict pydantic base and the one validation-error formatter of the project.

Every config model (serve app args, launcher configs) derives from ``StrictModel`` so a typo fails at
load, and every ``ValidationError`` shown to a user goes through ``format_validation_error`` so it
names the dotted key. The offending *input* is never echoed: it may be a secret.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One readable item per problem, naming the dotted key, e.g. ``engines.0.dtyp: extra field``."""
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"{prefix}{location}: {error['msg']}")
    return "; ".join(lines)
