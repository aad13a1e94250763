"""A pytest plugin: ``--only-gpu-skips`` fails the run when a test skips for any reason but hardware.

A skipped test passes quietly, so a missing tool or file would silently switch tests off on a user's
clone or in CI. No machine of this project has a GPU, and some have no AMX (Intel's matrix unit), so
"needs a GPU" and "needs a CPU with AMX" are the accepted reasons.
``scripts/test.sh`` loads it: ``pytest -p tests.skip_policy --only-gpu-skips``.
"""

from __future__ import annotations

import pytest

ACCEPTED = ("needs a GPU", "needs a CPU with AMX")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--only-gpu-skips", action="store_true",
                     help=f"fail the run if a test is skipped for a reason not starting with {ACCEPTED!r}")


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipPolicy:
    def __init__(self) -> None:
        self.refused: list[str] = []

    def _check(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and not _reason(report).startswith(ACCEPTED):
            self.refused.append(f"{report.nodeid}: {_reason(report)}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._check(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refused and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.refused:
            terminalreporter.section(f"skipped for a reason other than {ACCEPTED!r} (fails the run)", red=True)
            for line in self.refused:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("only_gpu_skips"):
        config.pluginmanager.register(SkipPolicy(), "skip-policy")
