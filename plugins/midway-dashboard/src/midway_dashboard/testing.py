"""Helpers for testing the dashboard in a real browser (Debian's chromium via Playwright).

Used by this package's tests and by the project's integration tests. Playwright is imported
lazily: it is a test dependency (``midway-dashboard[test]``), not a runtime one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def ensure_chromium() -> str:
    """The path of Debian's chromium, installing it with apt when missing and we are root.

    Fails loudly otherwise: a browser test that silently did not run proves nothing.
    """
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package "
                               "(apt-get install chromium) to run the browser tests")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       check=True, env=env)
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


@contextmanager
def browser() -> Iterator[Any]:
    """A headless chromium driven by Playwright; yields the Playwright ``Browser``."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield instance
        finally:
            instance.close()


def screenshot_dir(root: Path) -> Path:
    """Where screenshots go: ``$MIDWAY_SCREENSHOTS`` or ``<root>/artifacts/screenshots``."""
    path = Path(os.environ.get("MIDWAY_SCREENSHOTS") or root / "artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
