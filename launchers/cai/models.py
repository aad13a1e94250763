"""Typed views of the CML API v2 objects this project reads (see specs/cml/swagger.json).

The API's quirks are absorbed here once: int64 fields arrive as strings, ``environment`` arrives as
a JSON string although it is sent as a map, and jobs call their parent ``parent_id`` in responses.
Unknown fields are ignored: the API grows, and reading must not break on a new field.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

APP_STARTING = "APPLICATION_STARTING"
APP_RUNNING = "APPLICATION_RUNNING"
APP_STOPPED = "APPLICATION_STOPPED"
APP_FAILED = "APPLICATION_FAILED"
APP_UNKNOWN = "APPLICATION_UNKNOWN"

RUN_SUCCEEDED = "ENGINE_SUCCEEDED"
RUN_FINAL = frozenset({"ENGINE_SUCCEEDED", "ENGINE_FAILED", "ENGINE_TIMEDOUT", "ENGINE_STOPPED", "ENGINE_SKIPPED"})


class APIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _parse_environment(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}  # not ours to judge: an unreadable environment reads as empty
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


class Project(APIModel):
    id: str
    name: str = ""
    description: str = ""
    creation_status: str = ""
    environment: dict[str, str] = Field(default_factory=dict)

    _env = field_validator("environment", mode="before")(_parse_environment)


class Job(APIModel):
    id: str
    name: str = ""
    script: str = ""
    cpu: float = 0
    memory: float = 0
    nvidia_gpu: int = 0
    timeout: int = 0  # int64: a string on the wire
    parent_id: str = ""
    runtime_identifier: str = ""
    kernel: str = ""
    arguments: str = ""
    environment: dict[str, str] = Field(default_factory=dict)

    _env = field_validator("environment", mode="before")(_parse_environment)


class JobRun(APIModel):
    id: str
    job_id: str = ""
    status: str = "ENGINE_UNKNOWN"
    created_at: str = ""
    finished_at: str = ""
    environment: dict[str, str] = Field(default_factory=dict)

    _env = field_validator("environment", mode="before")(_parse_environment)

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINAL


class Application(APIModel):
    id: str
    name: str = ""
    subdomain: str = ""
    description: str = ""
    script: str = ""
    status: str = APP_UNKNOWN
    cpu: float = 0
    memory: float = 0
    nvidia_gpu: int = 0
    runtime_identifier: str = ""
    environment: dict[str, str] = Field(default_factory=dict)

    _env = field_validator("environment", mode="before")(_parse_environment)


class Runtime(APIModel):
    image_identifier: str
    editor: str = ""
    kernel: str = ""
    edition: str = ""
    full_version: str = ""
    status: str = ""


class FileInfo(APIModel):
    path: str
    is_dir: bool = False
    file_size: int = 0
