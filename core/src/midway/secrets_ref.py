"""Credential references in config: literal, ``env:NAME`` or ``file:PATH``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class SecretError(ValueError):
    """A reference that cannot be resolved; the message never contains the secret."""


def resolve(ref: str) -> str:
    """The secret a reference points to."""
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if not value:
            raise SecretError(f"environment variable {name} is not set")
        return value
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    return ref


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a credential, safe to print and store.

    For display only (router key health, metrics labels, ``Principal.key_id``): 48 bits of
    an unsalted hash, so two credentials can share one. Never decide who a client is by it:
    identities use :func:`midway.identity.passthrough_id`, a keyed hash of 128 bits."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:12]
