"""The CML specs the emulator validates against are vendored in the repo, with their provenance."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cml_emulator.spec import SPEC_PATH

REPO = Path(__file__).resolve().parents[3]
SPECS = REPO / "specs" / "cml"


def test_vendored_files_match_their_provenance() -> None:
    provenance = (SPECS / "PROVENANCE.md").read_text()
    listed = dict(re.findall(r"^\| (\S+\.json) \|.*\| ([0-9a-f]{64}) \|$", provenance, re.MULTILINE))
    assert set(listed) == {"swagger.json", "openapi3.json"}
    for name, digest in listed.items():
        assert hashlib.sha256((SPECS / name).read_bytes()).hexdigest() == digest, f"{name} changed: update PROVENANCE.md"
    for needed in ("Source", "Licence", "26.06.13"):
        assert needed in provenance


def test_emulator_reads_the_vendored_swagger() -> None:
    assert SPEC_PATH == SPECS / "swagger.json"


def test_no_test_reads_outside_the_repo() -> None:
    # ``../shared`` the directory beside the repo (not ``../../shared-storage``, a kustomize component)
    outside = re.compile(r"""\.\./shared(?![\w-])|parent\s*/\s*["']shared["']|/work/""")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")
                 if p != Path(__file__).resolve() and outside.search(p.read_text())]
    assert offenders == []
