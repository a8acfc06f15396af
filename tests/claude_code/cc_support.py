"""Running the real Claude Code CLI against midway (or directly against the fake upstream).

The conftest in this folder builds the fixtures from these pieces; the test modules import the
helpers (scripted replies, comparisons) from here.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from multidict import CIMultiDict

from midway import Exchange, hookimpl
from midway.testing import RecordedRequest, Reply, RunningMidway, wait_for

# Pinned: Claude Code changes what it sends between releases; a new version is a deliberate bump
# (MIDWAY_CLAUDE_CODE_VERSION overrides it to try one).
# What a gateway lists for /v1/models (model discovery), as a team would describe its models.
GATEWAY_MODELS = [
    {"id": "claude-sonnet-4-6", "display_name": "Sonnet 4.6 (team)",
     "description": "Everyday coding, billed to the team"},
    {"id": "claude-haiku-4-5", "display_name": "Haiku 4.5 (team)",
     "description": "Quick answers"},
]
CLAUDE_CODE_VERSION = os.environ.get("MIDWAY_CLAUDE_CODE_VERSION", "2.1.331")
RUN_TIMEOUT = 90.0  # seconds per `claude -p` run
AUTH_TOKEN = "sk-ant-cc-conformance-token"
MARKER = "midway-tool-ok"
# Requests carrying this header (Claude Code: ANTHROPIC_CUSTOM_HEADERS) go to the OpenAI fake.
ROUTE_HEADER = "x-midway-route"
OPENAI_MODEL = "gpt-fake-1"
# The model Claude Code uses when not told (this version); billing's catalogue prices it.
DEFAULT_MODEL = "claude-opus-5-5"
# The team setup: a midway key for a developer, and the real key only midway holds.
TEAM_KEY = {"key": "mw-conformance-alice-0123456789", "name": "alice", "team": "search"}
UPSTREAM_KEY = "sk-ant-upstream-held-by-midway"
# Spend limits: midway's admin key, and a CI key in a capped group.
SPEND_ADMIN_KEY = "mw-admin-key-spend-limits-cc-000000"
SPEND_CI_KEY = {"key": "mw-ci-bot-spend-limit-key-000000000", "name": "ci-bot",
                "team": "search", "groups": ["interns"]}
# The router maps this model to that one on the Anthropic upstream.
MAPPED_FROM = "claude-opus-4-7"
MAPPED_TO = "claude-sonnet-4-6"

# Claude Code's cloud modes, pointed at midway (``url``): the environment of each client format
# (the team setup presents a midway key in ANTHROPIC_CUSTOM_HEADERS), and a model in its naming.
FORMATS: dict[str, Callable[[str], dict[str, str]]] = {
    "vertex": lambda url: {"CLAUDE_CODE_USE_VERTEX": "1", "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
                           "ANTHROPIC_VERTEX_BASE_URL": f"{url}/v1",
                           "ANTHROPIC_VERTEX_PROJECT_ID": "cc-project",
                           "CLOUD_ML_REGION": "us-east5"},
    "bedrock": lambda url: {"CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
                            "ANTHROPIC_BEDROCK_BASE_URL": url, "AWS_REGION": "us-east-1"},
}
MODELS = {"vertex": "claude-sonnet-4-5@20250929",
          "bedrock": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
          "anthropic": "claude-sonnet-4-5-20250929"}
# The credentials midway signs with for the fake Bedrock (which checks SigV4 with them).
AWS_KEY, AWS_SECRET = "AKIACONFORMANCE00001", "conformance/aws+secret0000000000000000000"

# The matrix's name of the feature "midway's cost equals the one Claude Code reports"
# (cc_canary.CORE_FEATURES).
COST = "cost equals Claude Code's"

# Headers that legitimately differ between a direct connection and one through midway: the
# connection's own (Host, Content-Length), and Accept-Encoding, which midway narrows to the
# encodings it can decode (see midway.headers.filter_accept_encoding).
HOP_HEADERS = frozenset({"host", "content-length", "accept-encoding", "connection",
                         "keep-alive", "transfer-encoding"})


class ClaudeCodeMissing(RuntimeError):
    """Claude Code cannot be installed here (no npm, no network and no cached copy)."""


def cache_dir(version: str = CLAUDE_CODE_VERSION) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "midway-tests" / "claude-code" / version


def _native_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine,
                                                                                       machine)
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform,
                                                                         sys.platform)
    return f"claude-code-{system}-{arch}"


def _binary_in(prefix: Path) -> Path | None:
    native = prefix / "node_modules" / "@anthropic-ai" / _native_package() / "claude"
    if native.is_file():
        return native
    launcher = prefix / "node_modules" / ".bin" / "claude"
    return launcher if launcher.exists() else None


def install_claude_code(version: str = CLAUDE_CODE_VERSION) -> Path:
    """The Claude Code binary of ``version``, installed with npm into a per-version cache.

    Installs into a staging folder and renames it into place, so concurrent test runs never see
    a half-installed copy.
    """
    target = cache_dir(version)
    binary = _binary_in(target)
    if binary is not None:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise ClaudeCodeMissing(
            "npm is not on PATH: the Claude Code conformance tests install "
            f"@anthropic-ai/claude-code@{version} with npm (install Node.js and npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{version}.{uuid.uuid4().hex}"
    returncode, stderr = _npm_install_with_progress(
        [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
         "--loglevel=error", f"@anthropic-ai/claude-code@{version}"], staging, version, target)
    if returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ClaudeCodeMissing(f"npm install @anthropic-ai/claude-code@{version} failed:\n"
                                f"{stderr[-4000:]}")
    try:
        staging.rename(target)
    except OSError:  # another run installed it first
        shutil.rmtree(staging, ignore_errors=True)
    binary = _binary_in(target)
    if binary is None:
        raise ClaudeCodeMissing(f"npm installed Claude Code {version} into {target}, but neither "
                                f"{_native_package()}/claude nor .bin/claude is there")
    return binary


@attrs.define
class ClaudeRun:
    """One finished ``claude -p ... --output-format json``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    home: Path

    @property
    def output(self) -> dict[str, Any]:
        """Claude Code's JSON result (the last JSON line it printed)."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                value = json.loads(line)
                assert isinstance(value, dict)
                return value
        raise AssertionError(f"claude printed no JSON result (exit {self.returncode}).\n"
                             f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}")

    @property
    def result(self) -> str:
        return str(self.output.get("result"))

    def assert_success(self) -> dict[str, Any]:
        out = self.output
        assert self.returncode == 0 and out.get("is_error") is False and \
            out.get("subtype") == "success", \
            f"claude failed (exit {self.returncode}): {self.stdout[-3000:]}\n{self.stderr[-2000:]}"
        return out


class Claude:
    """Runs the CLI with a fresh HOME per run and nothing inherited but PATH."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        # One working directory for every run of a test, so runs that are compared (direct vs
        # through midway) get the same environment section in their system prompt.
        self.workdir = root / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runs: list[ClaudeRun] = []

    def run(self, base_url: str, prompt: str | None, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT,
            home: str | None = None, unset: Sequence[str] = (),
            keep_home: bool = False) -> ClaudeRun:
        """``home``: a name for the fresh HOME, to give two runs the same HOME path (its path
        is part of Claude Code's system prompt); it is emptied first, unless ``keep_home``
        (a run that resumes the session an earlier run left there). ``unset``: variables of
        the standard environment to leave out."""
        home_dir = self.root / (home or f"home{len(self.runs)}")
        if home_dir.exists() and not keep_home:
            shutil.rmtree(home_dir)
        # Its own temporary directory too: concurrent test runs share nothing.
        (home_dir / "tmp").mkdir(parents=True, exist_ok=True)
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home_dir),
            "TMPDIR": str(home_dir / "tmp"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_AUTH_TOKEN": AUTH_TOKEN,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            **(env or {}),
        }
        for name in unset:
            environ.pop(name, None)
        argv = [str(self.binary), "-p"]
        if prompt is not None:
            argv.append(prompt)
        argv += ["--output-format", "json", *args]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, env=environ, cwd=self.workdir, input=stdin,
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"claude did not finish within {timeout} s: "
                                 f"{exc.stdout!r:.2000} {exc.stderr!r:.2000}") from None
        run = ClaudeRun(args=argv[1:], returncode=proc.returncode, stdout=proc.stdout,
                        stderr=proc.stderr, seconds=time.monotonic() - started, home=home_dir)
        self.runs.append(run)
        return run


class Probe:
    """A plugin that keeps every finished exchange: what midway itself saw and recorded."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    @hookimpl(trylast=True)
    def post_response(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def messages(self) -> list[Exchange]:
        """/v1/messages exchanges in the order they arrived (post_response may finish a quick
        retry before the broken stream it replaced)."""
        return sorted((x for x in self.exchanges if x.request.path == "/v1/messages"),
                      key=lambda x: x.timings.started)

    def wait(self, count: int) -> list[Exchange]:
        """The first ``count`` /v1/messages exchanges, once post_response has run for them."""
        wait_for(lambda: len(self.messages()) >= count, timeout=30)
        return self.messages()


@attrs.define
class Stack:
    """Claude Code → midway (plugins enabled) → fake Anthropic upstream."""

    midway: RunningMidway
    probe: Probe

    @property
    def url(self) -> str:
        return self.midway.url

    def service(self, name: str) -> Any:
        return self.midway.midway.services[name]

    def audit_records(self, count: int) -> list[dict[str, Any]]:
        """Audit's records in the order their requests arrived, once ``count`` are committed
        (and no more exist)."""
        audit = self.service("audit")
        wait_for(lambda: len(self.midway.call(audit.query())) >= count, timeout=30)
        records = sorted(self.midway.call(audit.query()), key=lambda r: float(r["ts"]))
        assert len(records) == count, records
        return records


# -- scripted conversations -------------------------------------------------------------------

SIGNATURE = "EqoBCkgIBhABGAIiQF" + "Zm9vYmFyYmF6cXV4" * 6 + "EgxmaWQ="
THINKING = "The user wants the marker printed; running echo is the quickest check."
TOOL_ID = "toolu_01MidwayConformance0001"


def text_reply(text: str, usage: dict[str, Any] | None = None, **kwargs: Any) -> Reply:
    return Reply(content=[{"type": "text", "text": text}], usage=usage, **kwargs)


def tool_loop_replies(final: str = f"The command printed {MARKER}.") -> list[Reply]:
    """Turn 1: thinking (signed) + a Bash tool_use in five input_json_delta fragments.
    Turn 2: the answer after the tool result."""
    return [
        Reply(content=[
            {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
            {"type": "tool_use", "id": TOOL_ID, "name": "Bash",
             "input": {"command": f"echo {MARKER}", "description": "Print the marker"}},
        ], json_fragments=5,
            usage={"input_tokens": 1200, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "output_tokens": 64}),
        text_reply(final, usage={"input_tokens": 1300, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 0, "output_tokens": 12}),
    ]


def messages_since(requests: Sequence[RecordedRequest], start: int) -> list[RecordedRequest]:
    return [r for r in list(requests)[start:] if r.path == "/v1/messages"]


def comparable_headers(request: RecordedRequest) -> CIMultiDict[str]:
    """End-to-end headers of a request, minus those that differ per connection or session."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() in HOP_HEADERS or name.lower() == "x-claude-code-session-id":
            continue
        out.add(name.lower(), value)
    return out


def comparable_body(request: RecordedRequest, home: Path) -> Any:
    """A request body with its per-run values (session id, device metadata, the fresh HOME
    the run had) blanked."""
    body = request.json
    session = request.headers.get("x-claude-code-session-id", "")
    text = json.dumps(body, sort_keys=True).replace(str(home), "<home>")
    if session:
        text = text.replace(session, "<session>")
    value = json.loads(text)
    if isinstance(value, dict) and "metadata" in value:
        value["metadata"] = "<metadata>"
    return value


# Fields of Claude Code's JSON result that must not depend on whether midway is in the path
# (durations, ids and the session's own uuid do).
VISIBLE_FIELDS = ("type", "subtype", "is_error", "result", "stop_reason", "num_turns",
                  "total_cost_usd", "usage", "api_error_status", "terminal_reason",
                  "permission_denials")


def visible(output: dict[str, Any]) -> dict[str, Any]:
    return {k: output.get(k) for k in VISIBLE_FIELDS}


def _npm_install_with_progress(command: list[str], staging: Path, version: str, target: Path,
                               timeout: float = 900, every: float = 10
                               ) -> tuple[int, str]:
    """Run the (about 400 MB) npm install, saying on the terminal what it is doing and how
    far it got: pytest captures output, so progress goes to the real stderr."""
    out = sys.__stderr__
    started = time.monotonic()

    def say(text: str) -> None:
        if out is not None:
            print(f"[claude-code] {text}", file=out, flush=True)

    say(f"installing @anthropic-ai/claude-code@{version} with npm (about 400 MB, once; "
        f"cached in {target})")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        while True:
            try:
                proc.wait(every)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    break
                size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) \
                    if staging.exists() else 0
                say(f"{size / 1e6:.0f} MB after {elapsed:.0f} s")
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    say(f"npm finished in {time.monotonic() - started:.0f} s (exit {proc.returncode})")
    return proc.returncode, stderr
