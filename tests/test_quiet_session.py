"""A test session prints no deprecation warnings (#19 item 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_session_that_loads_every_plugin_has_no_deprecation_warning() -> None:
    # test_docs_commands imports midway and every installed plugin's commands; a warning from
    # pytest, a pytest plugin or an import then fails the run instead of scrolling past
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "error::DeprecationWarning", "-W", "error::PendingDeprecationWarning",
         "-W", "error::pytest.PytestConfigWarning",
         "tests/test_docs_commands.py"],
        cwd=ROOT, text=True, capture_output=True, timeout=120, check=False)
    assert ran.returncode == 0, (
        "a deprecation warning in the test session (a leftover pytest-asyncio? no midway test "
        f"uses it: uninstall it):\n{ran.stdout[-3000:]}{ran.stderr[-2000:]}")
