"""Errors of the CAI launchers. Messages are one readable line and never contain the API key."""

from __future__ import annotations


class CAIError(Exception):
    """An expected failure of a CAI launcher (bad config, API refusal, timeout); the CLI prints it."""


class CMLAPIError(CAIError):
    """The CML API answered with an error status (after retries, if the status was retryable)."""

    def __init__(self, message: str, *, status_code: int | None = None, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.path = path


class CMLAuthError(CMLAPIError):
    """401/403: the key is missing, wrong or lacks permission."""


class CMLNotFoundError(CMLAPIError):
    """404: the project, job, application or file does not exist."""


class CMLConflictError(CMLAPIError):
    """409 (or an "already exists" refusal): e.g. an application subdomain already taken."""


class CAITimeoutError(CAIError):
    """Something in CML did not reach the wanted state in time."""


class ClusterNotRunning(CAIError):
    """``status --check``: the cluster is not (fully) up. The CLI exits 3 for it, so scripts can tell
    "not running" from "could not ask"."""
