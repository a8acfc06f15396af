"""Every ``midway …`` command the docs show exists, with every option it uses (#19 item 18).

Shell blocks (```sh, ```console, or no language) of README.md and docs/*.md are read line by
line; each ``midway`` invocation is walked through the real click CLI with every installed
plugin's commands registered, the way the ``midway`` entry point registers them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest

from midway.cli import MidwayCLI, cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"sh", "console", ""}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def shell_lines(page: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of each shell-block line, continuations joined."""
    language: str | None = None
    pending, start = "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"\s*```(\S*)", line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language not in SHELL_BLOCKS:
            continue
        text = line.strip()
        text = text[2:] if text.startswith("$ ") else text
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        yield start, pending + text
        pending = ""


def inline_commands(page: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of each ``midway …`` code span in the prose (tables escape
    ``|`` as ``\\|``: alternatives, each checked)."""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for span in re.findall(r"`(midway [^`]*)`", line):
            yield number, span.replace("\\|", " ")


def invocations(command: str) -> Iterator[list[str]]:
    """The argument lists after each ``midway`` that starts a simple command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = [*lexer, ";"]
    except ValueError:  # unbalanced quotes: printed output, not a command
        assert not command.startswith("midway"), f"unparseable: {command}"
        return
    words: list[str] = []
    for token in tokens:
        if token not in SEPARATORS:
            words.append(token)
            continue
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words and words[0] == "midway":
            yield words[1:]
        words = []


def _loaded_cli() -> click.Group:
    """A fresh root group that registers plugin commands as the entry point does, with no
    config selecting plugins (so every installed one is loaded)."""
    group = MidwayCLI(name="midway", params=cli.params, commands=dict(cli.commands),
                      callback=cli.callback)
    group.list_commands(click.Context(group))
    return group


def _is_placeholder(word: str) -> bool:
    return word in {"…", "..."} or word.startswith("<") or word.isupper()


def problems(args: list[str], root: click.Group) -> Iterator[str]:
    """What in ``midway ARGS`` the CLI would not accept: an unknown subcommand or option."""
    command: click.Command = root
    path = "midway"
    words = iter(word.strip("[]") for word in args)  # [--json]: optional, still checked
    for word in words:
        if word == "--":
            return
        if word.startswith("-") and len(word) > 1:
            name = word.split("=", 1)[0]
            param = next((p for p in command.params if isinstance(p, click.Option)
                          and name in [*p.opts, *p.secondary_opts]), None)
            if param is None:
                if name not in command.get_help_option_names(click.Context(command)):
                    yield f"`{path}` has no option {name}"
                continue
            if not (param.is_flag or param.count or "=" in word):
                next(words, None)  # its value
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), word)
            if sub is None:
                if not _is_placeholder(word):
                    yield f"`{path}` has no subcommand {word!r}"
                return
            command, path = sub, f"{path} {word}"
            if command.context_settings.get("ignore_unknown_options"):
                return  # passes its arguments on (midway claude)


def test_every_documented_midway_command_exists_with_its_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIDWAY_CONFIG", "MIDWAY_PLUGINS", "MIDWAY_EXTRA_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    root = _loaded_cli()
    wrong, seen = [], 0
    for page in PAGES:
        for number, line in [*shell_lines(page), *inline_commands(page)]:
            for args in invocations(line):
                seen += 1
                wrong += [f"{page.relative_to(ROOT)}:{number}: {problem}  ({line})"
                          for problem in problems(args, root)]
    assert seen > 20, "the docs show midway commands; the block reader found almost none"
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_a_missing_subcommand_and_option() -> None:
    root = _loaded_cli()
    ok = list(invocations("MIDWAY_PORT=1 midway --data-dir D audit query --since 1h  # x"))
    assert ok == [["--data-dir", "D", "audit", "query", "--since", "1h"]]
    assert not list(problems(ok[0], root))
    assert list(problems(["audit", "serch"], root)) == ["`midway audit` has no subcommand 'serch'"]
    assert list(problems(["plugins", "--jsn"], root)) == ["`midway plugins` has no option --jsn"]
    assert list(invocations("pip install ./core && midway serve --port 1")) == [
        ["serve", "--port", "1"]]


def test_every_plugin_with_commands_registers_them() -> None:
    assert {"audit", "billing", "cache", "router", "keys", "config", "db"} <= set(
        _loaded_cli().commands)


def _midway(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(data_dir), "MIDWAY_DATA_DIR": str(data_dir)}
    midway = Path(sys.executable).with_name("midway")  # the entry point pip installed
    return subprocess.run([str(midway), *args], env=env, text=True, capture_output=True,
                          timeout=60, check=False)


def test_read_only_documented_commands_run(tmp_path: Path) -> None:
    listed = _midway(tmp_path, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    names = {p["name"] for p in orjson.loads(listed.stdout)}
    assert {d.name.removeprefix("midway-") for d in (ROOT / "plugins").glob("midway-*")} <= names
    assert all(p["error"] is None for p in orjson.loads(listed.stdout))
    for args in (["--help"], ["config", "show"]):
        ran = _midway(tmp_path, *args)
        assert ran.returncode == 0, f"midway {' '.join(args)}: {ran.stderr}"
