"""With the recommended settings, Claude Code talks to midway and to nothing else.

Every connection Claude Code makes beyond loopback is sent to a recording proxy
(HTTPS_PROXY), which refuses it and keeps its request line.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest
from cc_support import MARKER, Claude, Stack, text_reply, tool_loop_replies

from midway.testing import FakeUpstream


class _Recorder(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.server.lines.append(self.rfile.readline(4096))  # type: ignore[attr-defined]
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")


@pytest.fixture
def egress() -> Iterator[tuple[dict[str, str], list[bytes]]]:
    """Proxy variables for Claude Code, and the request lines the proxy received."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    lines: list[bytes] = []
    server.lines = lines  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    env = {name: value for name, value in (
        ("HTTPS_PROXY", proxy), ("HTTP_PROXY", proxy), ("https_proxy", proxy),
        ("http_proxy", proxy), ("NO_PROXY", "127.0.0.1,localhost"),
        ("no_proxy", "127.0.0.1,localhost"))}
    yield env, lines
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.cc_cell(feature="egress only to midway", format="anthropic", upstream="anthropic")
def test_claude_code_connects_only_to_midway(claude: Claude, stack: Stack,
                                             fake_upstream: FakeUpstream,
                                             egress: tuple[dict[str, str], list[bytes]]
                                             ) -> None:
    env, lines = egress
    fake_upstream.reply(*tool_loop_replies())
    out = claude.run(stack.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", "claude-sonnet-4-6", env=env).assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    assert len(stack.probe.wait(2)) == 2
    assert lines == []

    # Without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, the same run also calls Anthropic
    # directly (the proxy catches it): the reason the setup always sets it.
    fake_upstream.reply(text_reply("hello"))
    claude.run(stack.url, "Hello", "--model", "claude-sonnet-4-6", env=env,
               unset=["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"]).assert_success()
    assert any(b"api.anthropic.com" in line for line in lines), lines
