"""The ``[audit]`` config table (docs/audit.md), declared once: built by
``midway.options("audit", AuditConfig)`` at start-up and ``settings.options(...)`` in the
commands; the writer process builds it again from the same table (handoff/channel.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from midway.config import ConfigError
from midway.options import byte_size, option, schema_name, store_option
from midway.storage import StoreURL
from midway.timeparse import parse_optional_duration

MiB = 1024 * 1024
STORE_LABEL = "[audit] store"  # how the store setting is named in messages
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _synchronous(value: Any) -> Literal["full", "normal"]:
    text = str(value).strip().lower()
    if text == "full":
        return "full"
    if text == "normal":
        return "normal"
    raise ValueError(f"expected 'full' or 'normal', got {value!r}")


def _jsonl(value: Any) -> Path | None:
    if not value:
        return None
    if not isinstance(value, str | Path):
        raise ValueError(f"expected a path, got {value!r}")
    return Path(value).expanduser()


def _headers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(h, str) for h in value):
        raise ValueError(f"expected a list of header names, got {value!r}")
    return tuple(h.lower() for h in value)


def _max_rows(value: Any) -> int | None:
    """A positive count; ``0`` or unset: no limit."""
    if value is None or value == 0 or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected a positive number of records (or 0: no limit), got {value!r}")


def _prune_interval(value: Any) -> float:
    return parse_optional_duration(value) or 300.0  # 0 or unset: the default


def _write_ahead(value: Any) -> bool | Literal["durable"]:
    """``true`` / ``false`` / ``"durable"`` (also the environment's strings)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "durable":
        return "durable"
    if text in _TRUE + _FALSE:
        return text in _TRUE
    raise ValueError(f"expected true, false or 'durable', got {value!r}")


@attrs.frozen
class AuditConfig:
    """Everything the plugin can be told; docs/audit.md explains each key."""

    store: StoreURL = store_option(
        "audit.db", help="where records are kept: \"sqlite\" (audit.db in the data dir), a "
        "path, or postgresql://… (env:NAME / file:PATH hold one)")
    schema: str | None = option(
        None, converter=schema_name, help="PostgreSQL schema for the tables (default: the "
        "search_path)")
    sqlite_synchronous: Literal["full", "normal"] = option(
        "full", converter=_synchronous,
        help="full: fsync every commit; normal: survive a process crash, not a machine's")
    jsonl: Path | None = option(
        None, converter=_jsonl, help="also write a JSONL copy here (relative: under the data "
        "dir)")
    jsonl_max_bytes: int = option(100 * MiB, converter=byte_size,
                                  help="rotate the JSONL file at this size")
    jsonl_backups: int = option(5, ge=0, help="rotated JSONL files kept")
    bodies: bool = option(True, help="store request and response bodies")
    max_body_bytes: int = option(4 * MiB, converter=byte_size,
                                 help="per body, after redaction; longer ones are cut and marked")
    refused_per_minute: int = option(
        60, ge=0, help="records per client address and minute of requests midway refused "
        "before knowing the caller (bad key, refused path or web page); the rest are counted")
    redact_defaults: bool = option(True, help="mask the built-in secret patterns")
    redact_patterns: dict[str, str] = option(
        {}, help="more patterns to mask: name = Python regular expression")
    redact_headers: tuple[str, ...] = option((), converter=_headers,
                                             help="more header names never stored")
    queue_size: int = option(10_000, ge=1, help="the writer's queue, in records")
    queue_max_bytes: int = option(256 * MiB, converter=byte_size,
                                  help="the writer's queue, in body data")
    handoff_bytes: int = option(4 * MiB, converter=byte_size, help="the shared ring between "
                                "the relay and the writer process (at least 1 MiB)")
    writer_nice: int = option(10, ge=0, help="the writer process's niceness (0-19), added to "
                              "the relay's")
    batch_size: int = option(256, ge=1, help="records committed in one transaction at most")
    batch_linger: float = option(0.01, ge=0, help="seconds between hand-overs to the writer "
                                 "(and its batches)")
    on_full: Literal["block", "drop"] = option(
        "block", help="when the writer is behind: block (requests wait) or drop (counted)")
    flush_timeout: float = option(30.0, ge=0, help="at shutdown, seconds to keep retrying a "
                                  "failing store")
    body_max_age: float | None = option(
        30 * 86400.0, converter=parse_optional_duration,
        help="delete request and response bodies older than this (e.g. 30d), keeping the "
        "record and its verifiability; 0: keep bodies as long as records")
    max_age: float | None = option(365 * 86400.0, converter=parse_optional_duration,
                                   help="prune records older than this (e.g. 365d; 0: off)")
    max_rows: int | None = option(None, converter=_max_rows,
                                  help="prune the oldest beyond this many records (unset: off)")
    prune_interval: float = option(300.0, converter=_prune_interval,
                                   help="seconds between prunes")
    write_ahead: bool | Literal["durable"] = option(
        True, converter=_write_ahead, help="an intent per request as the upstream is "
        "contacted; \"durable\": the request waits for its commit")
    recover_interval: float = option(
        30.0, ge=0, help="seconds between the writer's looks for intents of instances that "
        "died while it runs (recorded as interrupted); 0: at start-up only")

    def __attrs_post_init__(self) -> None:
        if self.writer_nice > 19:
            raise ConfigError("[audit] writer_nice: expected 0 to 19, got "
                              f"{self.writer_nice}")
        if self.handoff_bytes < MiB:
            raise ConfigError("[audit] handoff_bytes: expected at least 1 MiB, got "
                              f"{self.handoff_bytes}")

    @property
    def write_ahead_durable(self) -> bool:
        """``write_ahead = "durable"``: the relay waits for each intent's commit."""
        return self.write_ahead == "durable"

    @property
    def is_postgres(self) -> bool:
        return self.store.kind == "postgresql"

    def jsonl_path(self, data_dir: Path) -> Path | None:
        """The JSONL sink's file: ``jsonl``, relative to ``data_dir`` unless absolute."""
        return None if self.jsonl is None else data_dir / self.jsonl

    def describe_store(self) -> str:
        """The store, for logs: the SQLite file, or the PostgreSQL URL without its password."""
        return self.store.masked
