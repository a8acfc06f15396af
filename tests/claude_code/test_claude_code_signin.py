"""The real Claude Code CLI signs in to midway through the company's IdP: ``/login`` driven in
tmux, the device code confirmed in chromium (Playwright) against a real OIDC provider, then a
prompt runs as that person; the audit record names them, and a group without Opus gets Opus
refused; the token refreshes, and a revoked session ends the next run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cc_signin import developer_machine, open_terminal, sign_in

from midway.testing import FakeUpstream, RunningMidway, start_midway, wait_for
from midway_identity import person_id
from midway_identity.testing import oidc_provider

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


@pytest.mark.cc_cell(feature="sign-in (OIDC)", format="anthropic", upstream="anthropic")
def test_claude_code_signs_in_through_the_idp(gateway: RunningMidway, claude_binary: Path,
                                              fake_upstream: FakeUpstream,
                                              tmp_path: Path, idp: str) -> None:
    assert shutil.which("tmux"), "tmux is needed to drive Claude Code's /login"
    port = gateway.url.rsplit(":", 1)[1]
    base = f"http://localhost:{port}"  # Claude Code takes plain http only for localhost
    env, work = developer_machine(tmp_path, base)
    term = open_terminal("signin", [str(claude_binary)], env, work)
    try:
        sign_in(term, base, "ian", "ian@corp.example")
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
