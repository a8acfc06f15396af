"""``docs/hooks.md``, generated from the hookspecs: ``python -m midway.hookdocs > docs/hooks.md``.

The docstrings of :mod:`midway.hookspecs` are the hook contract; this module only turns their
reStructuredText subset into Markdown: underlined section titles, ``::`` literal blocks,
``:param name:``/``:return:`` fields, ``*`` bullets and inline ``code`` and roles.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from midway import hookspecs

COMMAND = "python -m midway.hookdocs > docs/hooks.md"
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_CODE = re.compile(r"``(.+?)``", re.S)  # a span may cross a line break
_PARAM = re.compile(r":param (\w+):\s*(.*)")
_RETURN = re.compile(r":returns?:\s*(.*)")


def render() -> str:
    """The whole page: the module's rules, then one heading per hook with its signature."""
    module_doc = inspect.getdoc(hookspecs) or ""
    out = [f"<!-- Generated from core/src/midway/hookspecs.py by `{COMMAND}`.",
           "     Do not edit: change the docstrings and regenerate. -->", "",
           "# Hooks reference", "", markdown(module_doc)]
    for name in hookspecs.hook_names():
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        out += ["", f"## {name}({params})", "", "```python", _signature(fn), "```", "",
                markdown(inspect.getdoc(fn) or "")]
    return "\n".join(out) + "\n"


def _signature(fn: Callable[..., Any]) -> str:
    """The hookspec as declared; annotations are the source's strings (postponed)."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    options = getattr(fn, "midway_spec", {})
    marker = "@hookspec(firstresult=True)" if options.get("firstresult") else "@hookspec"
    return f"{marker}\ndef {fn.__name__}({params}) -> {sig.return_annotation}: ..."


def markdown(doc: str) -> str:
    """Markdown for one docstring. Raises ``ValueError`` on reST this converter does not know,
    so that the generated page never shows raw markup."""
    lines = doc.splitlines()
    text: list[str] = []  # Markdown still holding reST inline markup
    done: list[str] = []  # finished Markdown
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"}:
            text.append(f"## {line.strip()}")
            i += 2
            continue
        if line.rstrip().endswith("::"):
            intro = line.rstrip()[:-2].rstrip()
            if intro:
                text.append(intro + ":")
            block, i = _literal(lines, i + 1)
            done += [_inline("\n".join(text)), "", "```", *block, "```", ""]
            text = []
            continue
        if field := _PARAM.match(line):
            text.append(f"- ``{field[1]}`` — {field[2]}")
        elif field := _RETURN.match(line):
            text.append(f"- Returns {field[1]}")
        elif line.startswith("* "):
            text.append(f"- {line[2:]}")
        elif line.startswith("  ") and text and text[-1].startswith("- "):
            text[-1] += f"\n  {line.strip()}"  # a field's or bullet's next line
        else:
            text.append(line)
        i += 1
    return "\n".join([*done, _inline("\n".join(text))]).strip("\n")


def _literal(lines: list[str], i: int) -> tuple[list[str], int]:
    """A ``::`` block: the indented lines after it, dedented; and the index after them."""
    while i < len(lines) and not lines[i].strip():
        i += 1
    block: list[str] = []
    while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
        block.append(lines[i])
        i += 1
    return textwrap.dedent("\n".join(block)).strip("\n").splitlines(), i


def _inline(text: str) -> str:
    text = _CODE.sub(r"`\1`", _ROLE.sub(r"`\1`", text))
    if "``" in text or re.search(r":[a-z]+:`", text):
        raise ValueError(f"unconverted reST in a hookspec docstring: {text!r}")
    return text


if __name__ == "__main__":
    sys.stdout.write(render())
