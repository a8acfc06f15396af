"""The attack suite's report: tests marked ``@pytest.mark.attack(item, "what")`` (``item`` is
the number of the finding in issue #17) are the attacks; with ``--attack-report`` pytest
prints one line per attack at the end, ``held`` when every test of that attack passed,
``broken`` when one failed (``nox -s attack``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

_OUTCOMES: dict[tuple[int, str], list[str]] = defaultdict(list)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--attack-report", action="store_true",
                     help="print one line per attack (issue #17 item): held or broken")
    # The Claude Code conformance suite's (tests/claude_code, see cc_canary.py there): here,
    # since options must be declared by a conftest pytest reads before collecting.
    parser.addoption("--claude-code-version", default="pinned", metavar="pinned|latest|X.Y.Z",
                     help="the Claude Code release tests/claude_code runs: the pinned one "
                     "(default), npm's newest (falls back to the cached pinned one when npm "
                     "is unreachable, and says so) or a version")
    parser.addoption("--cc-matrix-json", default=None, metavar="PATH",
                     help="write the outcome of each cc_cell-marked test's cell (feature x "
                     "client format x upstream) as JSON to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "known_failure(what): a fault test that still finds the "
                            "defect it names; run by `nox -s faults`, not by CI")
    config.addinivalue_line("markers", "attack(item, what): an attack of issue #17's item "
                            "`item`, described by `what`; the test passes when it is refused")
    config.addinivalue_line("markers", "cc_cell(feature, format, upstream): a cell of the "
                            "Claude Code compatibility matrix this test checks (feature: a "
                            "name or a tuple of names); `nox -s canary` runs them")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    marker = item.get_closest_marker("attack")
    if marker is None or (report.when != "call" and report.passed):
        return
    number, what = marker.args
    # A failure in set-up or tear-down breaks the attack's test as much as one in its body.
    _OUTCOMES[(int(number), str(what))].append(report.outcome)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    if not config.getoption("--attack-report") or not _OUTCOMES:
        return
    terminalreporter.section("attacks (issue #17)")
    for (number, what), results in sorted(_OUTCOMES.items()):
        if "failed" in results:
            verdict = "broken"
        elif "passed" in results:
            verdict = "held"
        else:  # every test of it skipped: nothing was tried
            verdict = "skipped"
        terminalreporter.write_line(f"#{number:<3} {verdict:<7} {what}")
