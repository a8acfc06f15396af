"""Every setting a user can write is documented: the ``[midway]`` table in
docs/configuration.md, and every option a plugin declares (:mod:`midway.options`) in that
plugin's page, docs/<entry point name>.md (or docs/configuration.md).

A plugin's table class is found among the public attributes of its entry-point module (the
convention docs/writing-plugins.md shows: export it). Plugins that still read a loose dict
(``midway.config(name)``) declare nothing, so there is nothing to check for them yet.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import attrs
import pytest

from midway.config import Settings
from midway.options import declared
from midway.plugins import ENTRY_POINT_GROUP

DOCS = Path(__file__).resolve().parents[2] / "docs"
INTERNAL = {"config_path", "tables"}  # set by midway itself, not by users


def documented(key: str, *pages: Path) -> bool:
    return any(f"`{key}`" in page.read_text() for page in pages if page.exists())


def tables_of(module: Any) -> list[type[Any]]:
    """The declared table classes a plugin module exports."""
    found = []
    for name in dir(module):
        obj = getattr(module, name)
        if not name.startswith("_") and isinstance(obj, type) and attrs.has(obj) \
                and any("help" in f.metadata for f in attrs.fields(obj)):
            found.append(obj)
    return found


def test_every_midway_setting_is_documented() -> None:
    keys = [f.name for f in attrs.fields(Settings) if f.name not in INTERNAL]
    missing = [k for k in keys if not documented(k, DOCS / "configuration.md")]
    assert not missing, f"[midway] settings missing from docs/configuration.md: {missing}"


PLUGINS = sorted({ep.name: ep for ep in importlib.metadata.entry_points(
    group=ENTRY_POINT_GROUP)}.values(), key=lambda ep: ep.name)


@pytest.mark.parametrize("entry_point", PLUGINS, ids=[ep.name for ep in PLUGINS])
def test_every_declared_plugin_option_is_documented(
        entry_point: importlib.metadata.EntryPoint) -> None:
    module = entry_point.load()
    pages = (DOCS / f"{entry_point.name}.md", DOCS / "configuration.md")
    missing = [f"{cls.__name__}.{info.key}" for cls in tables_of(module)
               for info in declared(cls) if not documented(info.key, *pages)]
    assert not missing, f"undocumented [{entry_point.name}] settings: {missing}"


@pytest.mark.parametrize(("module", "tables"), [
    ("midway_router", ["RouterSettings"]), ("midway_dashboard", ["DashboardConfig"]),
    ("midway_audit", ["AuditConfig"]), ("midway_cache", ["CacheConfig"]),
    ("midway_otel", ["OtelConfig"]), ("midway_identity", ["IdentityConfig"])])
def test_the_declared_tables_are_found(module: str, tables: list[str]) -> None:
    # Guards the discovery above: a plugin that declares its table is really checked.
    plugin = pytest.importorskip(module)

    assert [c.__name__ for c in tables_of(plugin)] == tables


def test_every_builtin_plugin_option_is_documented() -> None:
    from midway.keys import KeysConfig

    missing = [info.key for info in declared(KeysConfig)
               if not documented(info.key, DOCS / "keys.md")]
    assert not missing, f"undocumented [keys] settings: {missing}"


def test_the_models_table_is_documented() -> None:
    from midway.model_list import ModelsConfig

    missing = [info.key for info in declared(ModelsConfig)
               if not documented(info.key, DOCS / "configuration.md")]
    assert not missing, f"undocumented [models] settings: {missing}"
