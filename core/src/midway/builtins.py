"""midway's own behaviour registered as plugins (datasette's default plugins): every plugin
host starts with fresh instances of these, before the installed plugins, whatever
``MIDWAY_PLUGINS`` says. Identity is one of them: a provider replaces nothing, it adds an
``authenticate`` implementation beside these."""

from __future__ import annotations

from midway.identity import ClientKeysPlugin
from midway.keys.plugin import KeysPlugin

# Registered in this order: among equal implementations the last registered runs first, so
# config-defined keys (a dict lookup) are tried before the key store.
NAMES = ("keys", "client_keys")


def builtin_plugins() -> list[tuple[str, object]]:
    """Fresh instances, one set per plugin host (state is never shared between instances)."""
    return [("keys", KeysPlugin()), ("client_keys", ClientKeysPlugin())]
