"""The data dir is private: prompts, answers, ledgers and keys live there.

``private_files()`` sets the process's umask so that everything it (and every process it
starts: workers, audit's writer) creates is its owner's only: directories 0700, files 0600
(SQLite gives a database's ``-wal``/``-shm`` files the database's own mode). ``prepare()``
creates the dir 0700 and warns, once, when an existing one is open to others. ``install_secret``
is the per-install secret kept there (see :mod:`midway.identity`).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from midway.config import ConfigError

log = logging.getLogger("midway")

PRIVATE_UMASK = 0o077
SECRET_FILE = "identity.secret"  # noqa: S105 (a file name)
_warned: set[Path] = set()


def private_files() -> None:
    """From now on, files and directories this process creates are its owner's only."""
    os.umask(PRIVATE_UMASK)


def prepare(path: Path) -> Path:
    """Create the data dir (0700) if needed; warn once when an existing one is wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and path not in _warned:
        _warned.add(path)
        log.warning("data dir %s is open to other users (mode %04o): prompts, answers and keys "
                    "are stored there; chmod 700 it", path, mode)
    return path


def install_secret(data_dir: Path) -> bytes:
    """This install's secret (32 random bytes, hex in ``<data_dir>/identity.secret``, 0600),
    created on first use. Processes racing to create it all end up with the same one."""
    path = prepare(data_dir) / SECRET_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    # Written in full under a unique name, then linked into place: a reader never sees half
    # a secret, and when two processes race, the first link wins and the other reads it.
    temp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise ConfigError(f"{path} does not hold a secret of at least 128 bits (32+ hex "
                          "digits): restore it from a backup, or delete it to start new "
                          "pass-through identities")
    return secret
