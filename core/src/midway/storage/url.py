"""One grammar for the ``store`` setting of every plugin.

=====================================  ============================================================
``"sqlite"`` (or unset)                the plugin's default file in the data dir (``audit.db`` …)
``"billing/ledger.db"``, ``"x.db"``    a path: relative ones are under the data dir, ``~`` expands
``"/srv/midway/audit.db"``             an absolute path
``"sqlite:///abs.db"``                 the same, as a URL; ``sqlite://rel.db`` is under the data dir
``"postgresql://user:pw@host/db"``     PostgreSQL (``postgres://`` too)
``"redis://…"``, ``"rediss://…"``,      Redis, for the stores that offer it (the cache)
``"unix://…"``
``"env:NAME"``, ``"file:PATH"``         a reference: the variable's or file's content is read and
                                       parsed by the rules above (a password never sits in config)
=====================================  ============================================================

A bare word that is none of these (``"postgress"``, ``"sqlite3"``) is an error rather than a file
of that name, so a typo cannot silently open a new, empty store.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import attrs

from midway.secrets_ref import SecretError, resolve

Kind = Literal["sqlite", "postgresql", "redis"]
_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


class StoreURLError(ValueError):
    """A ``store`` value that names no usable store; the message says what is accepted."""


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def mask(url: str) -> str:
    """A store URL without its password, fit for messages and logs."""
    return _PASSWORD.sub(r"\1:***@", url)


@attrs.frozen
class StoreURL:
    """Where a store lives: ``kind`` and either ``path`` (SQLite) or ``url`` (servers)."""

    kind: Kind
    path: Path | None = None
    url: str | None = None

    @property
    def masked(self) -> str:
        """What to print: the path, or the URL without its password."""
        return str(self.path) if self.path is not None else mask(self.url or "")

    @property
    def is_sqlite(self) -> bool:
        return self.kind == "sqlite"

    def __str__(self) -> str:
        return self.masked


def parse_store(value: object, *, data_dir: Path, default_file: str, label: str,
                kinds: tuple[Kind, ...] = ("sqlite", "postgresql")) -> StoreURL:
    """The store a ``store`` setting names.

    :param value: the setting as written (``None`` or ``""``: the default file).
    :param data_dir: where relative SQLite paths and the default file live.
    :param default_file: the plugin's default file name, e.g. ``"audit.db"``.
    :param label: how the setting is named in messages, e.g. ``"[audit] store"``.
    :param kinds: the kinds this plugin can use; another kind is an error.
    :raises StoreURLError: naming the setting and what is accepted; never the password.
    """
    text = "" if value is None else str(value).strip()
    if text.startswith(("env:", "file:")):
        try:
            resolved = resolve(text).strip()
        except SecretError as exc:
            raise StoreURLError(f"{label}: {exc}") from None
        if resolved.startswith(("env:", "file:")):
            raise StoreURLError(f"{label}: {text} points to another reference; "
                                "it must hold the store itself")
        store = _parse(resolved, data_dir, default_file, label, kinds, shown=text)
    else:
        store = _parse(text, data_dir, default_file, label, kinds, shown=mask(text))
    if store.kind not in kinds:
        raise StoreURLError(f"{label}: {store.kind} is not offered here; "
                            f"use {_accepted(kinds)}")
    return store


def _parse(text: str, data_dir: Path, default_file: str, label: str,
           kinds: tuple[Kind, ...], shown: str) -> StoreURL:
    if text in ("", "sqlite"):
        return StoreURL("sqlite", path=data_dir / default_file)
    if text.startswith(("postgresql://", "postgres://")):
        return StoreURL("postgresql", url=text)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return StoreURL("redis", url=text)
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://"):]
        if not rest or rest == "/":
            raise StoreURLError(f"{label}: {shown!r} names no file; use {_accepted(kinds)}")
        return StoreURL("sqlite", path=_under(Path(rest), data_dir))
    if "://" in text or _SCHEME.match(text):  # "postgresql:/db" is a typo, not a file name
        raise StoreURLError(f"{label}: unknown scheme in {shown!r}; use {_accepted(kinds)}")
    path = Path(text)
    if len(path.parts) > 1 or text.startswith("~") or text.endswith(_SQLITE_SUFFIXES):
        return StoreURL("sqlite", path=_under(path, data_dir))
    raise StoreURLError(f"{label}: {shown!r} is not a store; use {_accepted(kinds)}")


def _under(path: Path, data_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else data_dir / path


def _accepted(kinds: tuple[Kind, ...]) -> str:
    words = {"sqlite": '"sqlite", a path to a .db file',
             "postgresql": "postgresql://…", "redis": "redis://…"}
    return ", ".join(words[k] for k in kinds) + " (or env:NAME / file:PATH holding one)"
