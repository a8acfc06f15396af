"""Teams and client keys: a key store, the hot-path authenticator, the admin API and CLI.

The built-in ``keys`` plugin (:mod:`midway.keys.plugin`) serves them when ``[keys] enabled``;
see docs/keys.md.
"""

from __future__ import annotations

from midway.keys.cache import KeyCache
from midway.keys.config import KeysConfig
from midway.keys.model import KeyRecord, KeysError, Scope
from midway.keys.plugin import KEYS, KeysPlugin
from midway.keys.service import Issued, KeyService
from midway.keys.store import KeyStore, open_store

__all__ = ["KEYS", "Issued", "KeyCache", "KeyRecord", "KeyService", "KeyStore", "KeysConfig",
           "KeysError", "KeysPlugin", "Scope", "open_store"]
