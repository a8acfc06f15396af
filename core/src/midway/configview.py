"""The settings in force as ``midway config show`` prints them: core settings and every plugin
table (with ``MIDWAY_<NAME>__<KEY>`` overrides), credentials masked.

A value is a credential when its key names one (``key``, ``keys``, ``token``, ``secret``,
``password``, ``credentials``…): a reference (``env:NAME``, ``file:PATH``) is shown, since it
says where the secret lives, not what it is; a literal is replaced by its fingerprint. A
password inside a URL is masked wherever it appears.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs

from midway.config import Settings
from midway.secrets_ref import fingerprint
from midway.storage.url import mask

_SECRET_KEY = re.compile(r"(^|_)(keys?|token|secret|password|passwd|credentials?|auth)($|_)",
                         re.IGNORECASE)

_ENV_TABLE = re.compile(r"MIDWAY_([A-Z0-9_]+?)__[A-Z0-9_]+$")


def masked_secret(value: str) -> str:
    if value.startswith(("env:", "file:")):
        return value
    return f"(set: fingerprint {fingerprint(value)})"


def _masked(value: Any, secret: bool) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, secret or bool(_SECRET_KEY.search(str(k))))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, secret) for v in value]
    if isinstance(value, str):
        return masked_secret(value) if secret else mask(value)
    return value


def settings_view(settings: Settings) -> dict[str, Any]:
    """Everything in force, JSON-ready, credentials masked."""
    core = {field.name: getattr(settings, field.name) for field in attrs.fields(Settings)
            if field.name not in ("tables", "client_keys", "config_path")}
    core["data_dir"] = str(settings.data_dir)
    core["client_keys"] = [{"name": k.name, "team": k.team} for k in settings.client_keys]
    view: dict[str, Any] = {
        "config_path": str(settings.config_path) if settings.config_path else None,
        **_masked(core, False)}
    names = {name for name, table in settings.tables.items()
             if name != "midway" and isinstance(table, dict)}
    names |= {m.group(1).lower() for m in map(_ENV_TABLE.match, os.environ) if m}
    tables = {name: settings.plugin_config(name) for name in sorted(names)}
    view["tables"] = _masked(tables, False)
    return view
