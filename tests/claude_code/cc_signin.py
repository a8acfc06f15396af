"""Claude Code signed in to midway through the IdP, driven in tmux: shared by the sign-in and
the spend-limit tests (``/login`` typed, the device code confirmed by Playwright in chromium)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import orjson

from midway.testing import wait_for
from midway_dashboard.testing import browser
from midway_identity.testing import confirm_in_browser


class Terminal:
    """Claude Code in a tmux pane: keys in, screen out."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        command = " ".join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv])
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50",
                        "-c", str(cwd), command], check=True)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                             capture_output=True, text=True, check=False)
        return out.stdout

    def wait(self, text: str, timeout: float = 30) -> str:
        try:
            wait_for(lambda: text in self.screen(), timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"the terminal never showed {text!r}:\n{self.screen()}"
                                 ) from None
        return self.screen()

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, key], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False,
                       capture_output=True)


def developer_machine(tmp_path: Path, base: str) -> tuple[dict[str, str], Path]:
    """A machine past onboarding with ``work`` trusted and the gateway URL in the person's
    own settings (honoured where no managed settings exist: what an admin pushes by MDM).
    Returns the environment to run Claude Code with, and the work folder."""
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / "tmp").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (home / ".claude.json").write_bytes(orjson.dumps({
        "hasCompletedOnboarding": True, "theme": "dark", "numStartups": 5,
        "projects": {str(work): {"hasTrustDialogAccepted": True}}}))
    (home / ".claude" / "settings.json").write_bytes(orjson.dumps({
        "forceLoginMethod": "gateway", "forceLoginGatewayUrl": base}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8", "TERM": "xterm-256color",
           "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "BROWSER": "/bin/true"}  # the browser leg is Playwright's
    return env, work


def open_terminal(label: str, argv: list[str], env: dict[str, str], cwd: Path) -> Terminal:
    return Terminal(f"midway-{label}-{os.getpid()}-{int(time.time())}", argv, env, cwd)


def sign_in(term: Terminal, base: str, login: str, email: str) -> None:
    """``/login`` → Cloud gateway → trust it → the device code confirmed in chromium as
    ``login`` at the IdP → confirm the account: Claude Code is signed in."""
    term.wait("auto mode", 45)
    term.keys("/login")
    term.keys("Enter")
    screen = term.wait("Enter to connect")
    assert "Cloud gateway" in screen and base in screen
    term.keys("Enter")
    term.wait("Yes, trust this gateway")
    term.keys("Up", "Enter")
    screen = term.wait("Code:")
    code = re.search(r"Code:\s+([A-Z]{4}-[A-Z]{4})", screen)
    assert code is not None, screen
    with browser() as chromium:
        page = chromium.new_page()
        shown = confirm_in_browser(page, f"{base}/device?user_code={code.group(1)}", login)
        page.close()
    assert f"Signed in as {email}" in shown
    # Claude Code shows the account the gateway names and asks to confirm it
    term.wait(f"Signed in to Cloud gateway as {email}")
    term.keys("Up", "Enter")
    term.wait("Press Enter to continue")
    term.keys("Enter")
    term.wait("Login successful")
