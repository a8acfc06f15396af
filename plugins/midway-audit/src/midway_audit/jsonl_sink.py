"""A JSONL copy of every committed record, for log pipelines, with size-based rotation.

Lines are written after the store committed the batch, so each carries its seq and hashes
(a shipped log can be verified with the same rule as the store). Rotation renames
``audit.jsonl`` to ``audit.jsonl.1`` (and ``.1`` to ``.2``...) and keeps ``backups`` old files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson


class JsonlSink:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fh: IO[bytes] | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115  (held open for the process' life)
        self._size = self._fh.tell()

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append records (one line each), rotating first when a line would not fit."""
        assert self._fh is not None
        for record in records:
            line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._size += len(line)
        self._fh.flush()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
