"""A CML API v2 emulator for tests: the used subset, validated against the vendored Swagger file,
running each application's and job's script as a real local process (see server.py)."""

from .app import Fault
from .server import CMLEmulator
from .store import default_runtimes

RUNTIME = default_runtimes()[0]["image_identifier"]  # what the client's default filter picks

__all__ = ["RUNTIME", "CMLEmulator", "Fault"]
