"""The install instructions in the docs name what can be installed (#19 item 19)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_page_installs_from_an_index_that_does_not_serve_midway() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in page.read_text().splitlines():
            assert not re.match(r"\s*pip install (-U )?midway", line), f"{page.name}: {line}"


def test_the_build_session_exists_and_readme_and_claude_code_agree_on_the_key_variable(
        ) -> None:
    assert "def build(session" in (ROOT / "noxfile.py").read_text()
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "claude-code.md").read_text()
    assert "export ANTHROPIC_API_KEY=sk-ant-" in readme
    assert "Your `ANTHROPIC_API_KEY` passes through midway" in guide
    assert "ANTHROPIC_AUTH_TOKEN=sk-ant" not in readme + guide
