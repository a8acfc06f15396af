"""docs/hooks.md is generated from the hookspec docstrings, which state the whole contract."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from midway import hookdocs, hookspecs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def test_checked_in_page_is_the_generated_one():
    assert PAGE.read_text() == hookdocs.render(), (
        "docs/hooks.md differs from the hookspec docstrings in core/src/midway/hookspecs.py; "
        f"regenerate it from the repository root with `{hookdocs.COMMAND}`")


def test_the_command_prints_the_page():
    out = subprocess.run([sys.executable, "-m", "midway.hookdocs"], check=True,
                         capture_output=True, text=True).stdout
    assert out == hookdocs.render()


def test_one_heading_per_hook_with_its_exact_signature():
    headings = re.findall(r"^## (\w+)\((.*)\)$", hookdocs.render(), flags=re.M)
    assert headings == [(name, ", ".join(inspect.signature(getattr(hookspecs, name)).parameters))
                        for name in hookspecs.hook_names()]


@pytest.mark.parametrize("name", hookspecs.hook_names())
def test_every_hook_states_its_whole_contract(name):
    spec = getattr(hookspecs, name)
    doc = " ".join((inspect.getdoc(spec) or "").split())  # sentences cross line breaks
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{name} does not describe {param}"
    assert ":return:" in doc, f"{name} does not say what it returns"
    assert "Fires " in doc, f"{name} does not say when it fires"
    assert "Raising" in doc, f"{name} does not say what happens when it raises"
    if spec.midway_spec.get("firstresult"):
        assert "First result: the first non-None result wins" in doc, name
    else:
        assert "Every implementation runs" in doc, name


def test_module_rules_are_on_the_page():
    page = hookdocs.render()
    for section in ("## Implementing a hook", "## Order", "## When an implementation raises",
                    "## Shared conventions"):
        assert section in page
    assert "sorted by entry-point name" in page


def test_markdown_converts_the_rest_subset():
    doc = inspect.cleandoc("""
        Title
        -----

        A diagram::

            a ─▶ b
              └─ c

        :param exchange: the request, with ``code`` that goes
            over a line break, and :class:`midway.Exchange`.
        :return: nothing.

        * one
          more
        """)
    assert hookdocs.markdown(doc) == inspect.cleandoc("""
        ## Title

        A diagram:

        ```
        a ─▶ b
          └─ c
        ```

        - `exchange` — the request, with `code` that goes
          over a line break, and `midway.Exchange`.
        - Returns nothing.

        - one
          more
        """)


def test_markup_the_converter_does_not_know_fails_loudly():
    with pytest.raises(ValueError, match="unconverted reST"):
        hookdocs.markdown("see :ref:`the `guide`` here")
