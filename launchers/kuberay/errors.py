"""Errors of the KubeRay launcher: one readable line each, never a secret's value."""

from __future__ import annotations


class KubeRayError(Exception):
    """An expected failure (kubectl missing, bad context, CRDs not installed, timeout); the CLI prints it."""


class KubeRayTimeout(KubeRayError):
    """The RayService did not become ready in time."""


class NotReady(KubeRayError):
    """``status --check``: the RayService exists but is not ready, or does not exist (exit code 3)."""
