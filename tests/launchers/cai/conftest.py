"""Fixtures for the CAI launcher tests: a CML emulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cml_emulator import CMLEmulator
from cml_emulator.store import Timing

from launchers.cai.client import CMLClient
from launchers.cai.http import RetryPolicy


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[CMLEmulator]:
    with CMLEmulator(tmp_path / "cml", timing=Timing(app_start=0.1, run_schedule=0.1, clone=0.2, stop_grace=3)) as cml:
        yield cml
        assert cml.app.violations == [], "the emulator answered outside the contract"
        assert cml.app.ignored == [], "the client sent fields or parameters the API does not define"


@pytest.fixture
def client(emulator: CMLEmulator) -> Iterator[CMLClient]:
    with CMLClient(emulator.url, emulator.api_key, timeout=5,
                   retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)) as cml_client:
        yield cml_client
