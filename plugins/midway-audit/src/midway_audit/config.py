"""The ``[audit]`` config table, read once at start-up (and by the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from midway.config import ConfigError
from midway.storage import StoreURL, StoreURLError, parse_store
from midway.timeparse import parse_optional_duration

MiB = 1024 * 1024
STORE_LABEL = "[audit] store"  # how the store setting is named in messages
_DEFAULT_STORE = StoreURL("sqlite", path=Path("audit.db"))  # from_table puts it in the data dir


class AuditConfigError(ValueError):
    """The ``[audit]`` table cannot be used; the message says which key."""


def parse_duration(value: Any, key: str) -> float | None:
    """``3600``, ``"90m"``, ``"30d"`` → seconds (:mod:`midway.timeparse`); ``None``/``0``/``""``
    → ``None`` (off)."""
    try:
        return parse_optional_duration(value)
    except ConfigError as exc:
        raise AuditConfigError(f"[audit] {key}: {exc}") from None


@attrs.define
class AuditConfig:
    """Everything the plugin can be told. See docs/audit.md for each key."""

    # "sqlite", a path, "sqlite:///path.db", "postgresql://..." (or env:/file:): parse_store
    store: StoreURL = _DEFAULT_STORE
    schema: str | None = None  # PostgreSQL schema for the tables (default: search_path)
    sqlite_synchronous: str = "full"  # full | normal: fsync per commit or per checkpoint
    jsonl: Path | None = None  # extra JSONL sink (relative paths are under the data dir)
    jsonl_max_bytes: int = 100 * MiB
    jsonl_backups: int = 5
    bodies: bool = True
    max_body_bytes: int = 4 * MiB  # per body, after redaction; longer ones are cut and marked
    redact_defaults: bool = True
    redact_patterns: dict[str, str] = attrs.field(factory=dict)  # name -> regex
    redact_headers: tuple[str, ...] = ()  # extra header names never stored
    queue_size: int = 10_000
    queue_max_bytes: int = 256 * MiB  # and at most this much body data waiting
    handoff_bytes: int = 16 * MiB  # the shared ring between the relay and the writer process
    writer_nice: int = 10  # the writer process's niceness, added to the relay's
    batch_size: int = 256
    batch_linger: float = 0.01  # seconds a batch waits for more records before committing
    on_full: str = "block"  # block (backpressure, nothing lost) | drop (counted)
    flush_timeout: float = 30.0  # at shutdown, how long to keep retrying a failing store
    max_age: float | None = None  # seconds; prune older records
    max_rows: int | None = None  # prune oldest beyond this many
    prune_interval: float = 300.0
    # an intent per request, handed to the writer when the upstream is contacted
    # (handoff/intents.py)
    write_ahead: bool = True
    # write_ahead = "durable": the relay also waits for the intent's commit before sending
    write_ahead_durable: bool = False

    @property
    def is_postgres(self) -> bool:
        return self.store.kind == "postgresql"

    @classmethod
    def from_table(cls, table: dict[str, Any], data_dir: Path) -> AuditConfig:
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise AuditConfigError(f"[audit] unknown key(s): {', '.join(unknown)}")
        try:
            config = cls(
                store=parse_store(table.get("store"), data_dir=data_dir,
                                  default_file="audit.db", label=STORE_LABEL),
                schema=table.get("schema") or None,
                sqlite_synchronous=str(table.get("sqlite_synchronous", "full")).lower(),
                jsonl=_jsonl_path(table.get("jsonl"), data_dir),
                jsonl_max_bytes=int(table.get("jsonl_max_bytes", 100 * MiB)),
                jsonl_backups=int(table.get("jsonl_backups", 5)),
                bodies=bool(table.get("bodies", True)),
                max_body_bytes=int(table.get("max_body_bytes", 4 * MiB)),
                redact_defaults=bool(table.get("redact_defaults", True)),
                redact_patterns={str(k): str(v) for k, v in
                                 dict(table.get("redact_patterns") or {}).items()},
                redact_headers=tuple(str(h).lower() for h in table.get("redact_headers", ())),
                queue_size=int(table.get("queue_size", 10_000)),
                queue_max_bytes=int(table.get("queue_max_bytes", 256 * MiB)),
                handoff_bytes=int(table.get("handoff_bytes", 16 * MiB)),
                writer_nice=int(table.get("writer_nice", 10)),
                batch_size=int(table.get("batch_size", 256)),
                batch_linger=float(table.get("batch_linger", 0.01)),
                on_full=str(table.get("on_full", "block")),
                flush_timeout=float(table.get("flush_timeout", 30.0)),
                max_age=parse_duration(table.get("max_age"), "max_age"),
                max_rows=int(table["max_rows"]) if table.get("max_rows") else None,
                prune_interval=float(parse_duration(table.get("prune_interval", 300),
                                                    "prune_interval") or 300.0),
                write_ahead=_write_ahead(table.get("write_ahead", True)) != "off",
                write_ahead_durable=_write_ahead(table.get("write_ahead", True)) == "durable",
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, AuditConfigError):
                raise
            if isinstance(exc, StoreURLError):
                raise AuditConfigError(str(exc)) from None
            raise AuditConfigError(f"[audit] invalid value: {exc}") from None
        if config.on_full not in ("block", "drop"):
            raise AuditConfigError("[audit] on_full must be 'block' or 'drop'")
        if config.sqlite_synchronous not in ("full", "normal"):
            raise AuditConfigError("[audit] sqlite_synchronous must be 'full' or 'normal'")
        if not 0 <= config.writer_nice <= 19:
            raise AuditConfigError("[audit] writer_nice must be between 0 and 19")
        if config.handoff_bytes < MiB:
            raise AuditConfigError("[audit] handoff_bytes must be at least 1 MiB")
        if config.queue_size < 1 or config.batch_size < 1 or config.max_body_bytes < 0:
            raise AuditConfigError("[audit] queue_size and batch_size must be positive")
        return config

    def describe_store(self) -> str:
        """The store, for logs: the SQLite file, or the PostgreSQL URL without its password."""
        return self.store.masked


def _flag(value: Any, key: str) -> bool:
    """A boolean, also from the environment's strings (``MIDWAY_AUDIT__WRITE_AHEAD=false``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise AuditConfigError(f"[audit] {key} must be true or false, got {value!r}")


def _write_ahead(value: Any) -> str:
    """``true`` / ``false`` / ``"durable"`` → "on", "off", "durable"."""
    if isinstance(value, str) and value.strip().lower() == "durable":
        return "durable"
    try:
        return "on" if _flag(value, "write_ahead") else "off"
    except AuditConfigError:
        raise AuditConfigError(f"[audit] write_ahead must be true, false or 'durable', got "
                               f"{value!r}") from None


def _jsonl_path(value: Any, data_dir: Path) -> Path | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else data_dir / path
