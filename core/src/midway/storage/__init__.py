"""The storage substrate every plugin builds on.

* :func:`parse_store` — one grammar for every ``store`` setting (:mod:`midway.storage.url`);
* :func:`open_database` — one :class:`Database` API over SQLite and PostgreSQL, a unit of work
  per transaction, schemas migrated additively (:mod:`midway.storage.database`);
  :func:`stores_created` ``(False)`` makes opening a missing embedded store an error (read
  commands);
* :func:`liveness` — which instances sharing a store are alive, surviving a database restart
  (:mod:`midway.storage.liveness`);
* :func:`check_store` / :func:`upgrade_store` — ``midway config check`` and ``midway db
  upgrade`` for any store (:mod:`midway.storage.schema`);
* :func:`retrying` — writes that must land, retried while the database blinks; :func:`reach`
  — start-up's first contact with a store, waited for up to ``store_wait`` seconds, then one
  line (:class:`StoreUnavailable`) (:mod:`midway.storage.retry`).

Redis is not a SQL store: plugins that offer it use the ``redis`` package directly, and only
the URL grammar, :func:`check_store` and :func:`ping_redis` (start-up's ``PING``) here.
"""

from midway.storage.database import (
    Database,
    PostgresDatabase,
    Row,
    Schema,
    SQLiteDatabase,
    StoreMissing,
    Tx,
    open_database,
    stores_created,
)
from midway.storage.liveness import Liveness, liveness, new_instance
from midway.storage.retry import (
    Episode,
    StoreUnavailable,
    describe,
    is_transient,
    reach,
    retrying,
)
from midway.storage.schema import UPGRADE_HINT, check_store, ping_redis, upgrade_store
from midway.storage.url import StoreURL, StoreURLError, mask, parse_store

__all__ = [
    "UPGRADE_HINT", "Database", "Episode", "Liveness", "PostgresDatabase", "Row",
    "SQLiteDatabase", "Schema", "StoreMissing", "StoreURL", "StoreURLError",
    "StoreUnavailable", "Tx", "check_store", "describe", "is_transient", "liveness", "mask",
    "new_instance", "open_database", "parse_store", "ping_redis", "reach", "retrying",
    "stores_created", "upgrade_store",
]
