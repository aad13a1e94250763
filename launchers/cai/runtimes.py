"""Which ML Runtime jobs and applications run on.

Every current CML workspace uses ML Runtimes, and there CreateJob (and in practice
CreateApplication) needs a ``runtime_identifier``. It is chosen, in this order:

1. an explicit ``runtime_identifier`` (config, or ``RUNTIME_IDENTIFIER``), checked to exist;
2. otherwise the newest enabled runtime (``GET /api/v2/runtimes``) whose editor, kernel and
   edition are exactly ``RuntimeFilter``'s (defaults below); an enabled one beats a deprecated one.

If nothing matches, the error lists what the workspace has, so the filter can be fixed in one go.
"""

from __future__ import annotations

import re

from pydantic import Field

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError
from launchers.cai.models import Runtime
from serve_apps.validation import StrictModel

DEFAULT_EDITOR = "PBJ Workbench"
DEFAULT_KERNEL = "Python 3.11"  # the package needs Python >= 3.11
DEFAULT_EDITION = "Standard"
LISTED = 12  # candidates named in an error


class RuntimeFilter(StrictModel):
    """Exact values of a runtime's fields (as ``GET /api/v2/runtimes`` shows them)."""

    editor: str = Field(DEFAULT_EDITOR, min_length=1)
    kernel: str = Field(DEFAULT_KERNEL, min_length=1)
    edition: str = Field(DEFAULT_EDITION, min_length=1)

    def describe(self) -> str:
        return f"editor={self.editor!r}, kernel={self.kernel!r}, edition={self.edition!r}"


def _version(runtime: Runtime) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", runtime.full_version))


def _usable(runtimes: list[Runtime]) -> list[Runtime]:
    return [r for r in runtimes if r.status.upper() != "DISABLED"]


def _summary(runtimes: list[Runtime]) -> str:
    kinds = sorted({f"{r.editor} / {r.kernel} / {r.edition}" for r in _usable(runtimes)})
    if not kinds:
        return "none"
    more = f" (+{len(kinds) - LISTED} more)" if len(kinds) > LISTED else ""
    return "; ".join(kinds[:LISTED]) + more


def candidates(client: CMLClient, wanted: RuntimeFilter) -> list[Runtime]:
    """Usable runtimes matching ``wanted`` exactly, best first (enabled, then newest)."""
    found = _usable(client.list_runtimes(editor=wanted.editor, kernel=wanted.kernel, edition=wanted.edition))
    return sorted(found, key=lambda r: (r.status.upper() == "ENABLED", _version(r)), reverse=True)


def choose_runtime(client: CMLClient, wanted: RuntimeFilter, identifier: str | None = None) -> str:
    """The runtime identifier to send; ``CAIError`` naming the candidates if there is none."""
    if identifier:
        if _usable(client.list_runtimes(image_identifier=identifier)):
            return identifier
        raise CAIError(f"runtime_identifier {identifier!r} is not an enabled runtime on {client.host}; "
                       f"runtimes there (editor / kernel / edition): {_summary(client.list_runtimes())}")
    best = candidates(client, wanted)
    if not best:
        raise CAIError(f"no enabled runtime on {client.host} matches {wanted.describe()}; runtimes there "
                       f"(editor / kernel / edition): {_summary(client.list_runtimes())}. Set runtime "
                       "(editor, kernel, edition) or runtime_identifier in the config")
    return best[0].image_identifier
