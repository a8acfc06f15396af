"""The real Claude Code CLI signs in to midway through the company's IdP: ``/login`` driven in
tmux, the device code confirmed in chromium (Playwright) against a real OIDC provider, then a
prompt runs as that person; the audit record names them, and a group without Opus gets Opus
refused; the token refreshes, and a revoked session ends the next run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from midway.testing import FakeUpstream, RunningMidway, start_midway, wait_for
from midway_dashboard.testing import browser
from midway_identity import person_id
from midway_identity.testing import confirm_in_browser, oidc_provider

PEOPLE = {"ian": {"email": "ian@corp.example", "name": "Ian Intern", "groups": ["interns"]}}
GROUP_MODELS = {"engineering": ["claude-*"], "interns": ["claude-haiku-*", "claude-sonnet-*"]}


@pytest.fixture
def idp() -> Iterator[str]:
    with oidc_provider(PEOPLE) as issuer:
        yield issuer


@pytest.fixture
def gateway(idp: str, fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningMidway]:
    config = {"midway": {"plugins": ["audit", "identity"]},
              "audit": {"store": "sqlite"},
              "identity": {"issuer": idp, "client_id": "midway-cc", "client_secret": "cc-secret",
                           "group_models": GROUP_MODELS, "revocation_cache_seconds": 0,
                           # so short that Claude Code must refresh before its next request
                           "token_seconds": 1}}
    running = start_midway(tmp_path / "midway", fake_upstream.url, config=config,
                           upstream_api_key="sk-ant-upstream-held-by-midway")
    yield running
    running.stop()


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


@pytest.mark.cc_cell(feature="gateway sign-in", format="anthropic", upstream="anthropic")
def test_claude_code_signs_in_through_the_idp(gateway: RunningMidway, claude_binary: Path,
                                              fake_upstream: FakeUpstream,
                                              tmp_path: Path, idp: str) -> None:
    assert shutil.which("tmux"), "tmux is needed to drive Claude Code's /login"
    port = gateway.url.rsplit(":", 1)[1]
    base = f"http://localhost:{port}"  # Claude Code takes plain http only for localhost
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / "tmp").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    # a machine past onboarding, this folder trusted, and the gateway URL in the person's own
    # settings (honoured where no managed settings exist: what an admin pushes by MDM)
    (home / ".claude.json").write_bytes(orjson.dumps({
        "hasCompletedOnboarding": True, "theme": "dark", "numStartups": 5,
        "projects": {str(work): {"hasTrustDialogAccepted": True}}}))
    (home / ".claude" / "settings.json").write_bytes(orjson.dumps({
        "forceLoginMethod": "gateway", "forceLoginGatewayUrl": base}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8", "TERM": "xterm-256color",
           "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "BROWSER": "/bin/true"}  # the browser leg is Playwright's
    term = Terminal(f"midway-signin-{os.getpid()}-{int(time.time())}", [str(claude_binary)],
                    env, work)
    try:
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
            shown = confirm_in_browser(page, f"{base}/device?user_code={code.group(1)}", "ian")
            page.close()
        assert "Signed in as ian@corp.example" in shown
        # Claude Code shows the account the gateway names and asks to confirm it
        term.wait("Signed in to Cloud gateway as ian@corp.example")
        term.keys("Up", "Enter")
        term.wait("Press Enter to continue")
        term.keys("Enter")
        term.wait("Login successful")
        # Claude Code's default model is an Opus: not for interns
        term.keys("Say hello")
        term.keys("Enter")
        screen = term.wait("may not use model", 60)
        assert "403" in screen and "opus" in screen.lower()
        term.keys("/exit")
        term.keys("Enter")
    finally:
        term.close()

    # the stored sign-in drives a non-interactive run too, on an allowed model
    started = len(fake_upstream.messages_requests)
    proc = subprocess.run([str(claude_binary), "-p", "Say hello", "--model", "claude-haiku-4-5",
                           "--output-format", "json"], env={**env, "TERM": "dumb"}, cwd=work,
                          capture_output=True, text=True, timeout=90, check=False)
    out = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert out["is_error"] is False, proc.stdout[-2000:]
    assert len(fake_upstream.messages_requests) > started
    sent = fake_upstream.messages_requests[-1].headers
    assert sent.get("x-api-key") == "sk-ant-upstream-held-by-midway"  # never the token
    assert "authorization" not in {k.lower() for k in sent}
    audit = gateway.midway.services["audit"]
    wait_for(lambda: any(r["principal_kind"] == "oidc"
                         for r in gateway.call(audit.query())), timeout=30)
    records: list[dict[str, Any]] = [r for r in gateway.call(audit.query())
                                     if r["principal_kind"] == "oidc"]
    assert {r["principal_name"] for r in records} == {"Ian Intern"}
    assert {r["principal"] for r in records} == {person_id(idp, "ian")}
    assert any(r["model"] == "claude-haiku-4-5" and r["status"] == 200 for r in records)
    assert any(r["status"] == 403 for r in records), "the refused Opus request is audited"
    # Claude Code refreshed its token (a 1 s lifetime) through midway's token endpoint
    identity = gateway.midway.services["identity"]
    sessions = gateway.call(identity.store.sessions("ian@corp.example"))
    assert len(sessions) == 1 and sessions[0].refreshed_at is not None

    # an administrator ends the session: the next run is refused and told to sign in again
    assert gateway.call(identity.store.revoke([sessions[0].id], "left the company")) == 1
    proc = subprocess.run([str(claude_binary), "-p", "Say hello", "--model", "claude-haiku-4-5",
                           "--output-format", "json"], env={**env, "TERM": "dumb"}, cwd=work,
                          capture_output=True, text=True, timeout=90, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "no longer accepts this session" in said and "/login" in said, said[-2000:]
