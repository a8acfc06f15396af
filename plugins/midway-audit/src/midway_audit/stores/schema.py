"""The audit store's tables, written once for SQLite and PostgreSQL (``{int}``, ``{real}``:
see :class:`midway.storage.Schema`). Adding a column here migrates existing stores."""

from __future__ import annotations

from midway.storage import Schema

SCHEMA = Schema("audit", """
CREATE TABLE IF NOT EXISTS audit_records (
    seq {int} PRIMARY KEY,
    ts {real} NOT NULL,
    request_id TEXT NOT NULL,
    upstream_request_id TEXT,
    principal TEXT,
    model TEXT,
    status INTEGER,
    data TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    request_body_sha256 TEXT,
    response_body_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_request_id ON audit_records (request_id);
CREATE INDEX IF NOT EXISTS audit_records_principal ON audit_records (principal, ts);
CREATE TABLE IF NOT EXISTS audit_parts (
    digest TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_part_refs (
    digest TEXT NOT NULL,
    seq {int} NOT NULL,
    PRIMARY KEY (digest, seq)
);
CREATE INDEX IF NOT EXISTS audit_part_refs_seq ON audit_part_refs (seq);
CREATE TABLE IF NOT EXISTS audit_intents (
    request_id TEXT PRIMARY KEY,
    instance INTEGER NOT NULL,
    ts {real} NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_intents_instance ON audit_intents (instance);
CREATE TABLE IF NOT EXISTS audit_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq {int} NOT NULL,
    head_hash TEXT NOT NULL,
    anchor_seq {int} NOT NULL,
    anchor_hash TEXT NOT NULL,
    parts_epoch {int} NOT NULL DEFAULT 0
)
""")
