"""What ``midway serve`` checks before it starts anything, and ``midway config check`` reports.

Each finding is one line a person can act on: what is wrong, where (the file, table and key,
or the variable), and the fix. :func:`check` raises one :class:`~midway.config.ConfigError`
holding every problem, one per line; :func:`warnings` are worth saying but do not stop
start-up.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import os
import socket
from pathlib import Path

from midway.config import ConfigError, Settings
from midway.plugins import installed_plugin_names
from midway.secrets_ref import SecretError, resolve


def check(settings: Settings) -> None:
    """Everything :func:`problems` finds, then whether the port is free; raises
    :class:`ConfigError` (one problem per line)."""
    found = problems(settings)
    if not found:
        port = port_problem(settings)
        found = [port] if port else []
    if found:
        raise ConfigError("\n".join(found))


def problems(settings: Settings) -> list[str]:
    """Plugin names and modules, and the credentials the core itself resolves."""
    return [*plugin_name_problems(settings), *extra_plugin_problems(settings),
            *secret_problems(settings)]


def plugin_name_problems(settings: Settings) -> list[str]:
    """Names in ``MIDWAY_PLUGINS`` / ``[midway] plugins`` that no installed plugin has."""
    if not settings.plugins:
        return []
    installed = installed_plugin_names()
    where = ("MIDWAY_PLUGINS" if "MIDWAY_PLUGINS" in os.environ
             else f"{settings.config_path}: [midway] plugins")
    out = []
    for name in settings.plugins:
        if name in installed:
            continue
        close = difflib.get_close_matches(name, installed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        out.append(f"{where}: no installed plugin is called {name!r}; {hint}installed: "
                   f"{', '.join(installed) or 'none'}")
    return out


def extra_plugin_problems(settings: Settings) -> list[str]:
    """``--plugin`` files that do not exist and modules that cannot be found."""
    out = []
    for spec in settings.extra_plugins:
        if spec.endswith(".py") or os.sep in spec:
            if not Path(spec).is_file():
                out.append(f"--plugin {spec}: no such file; give the path of a .py file or "
                           "an importable module")
            continue
        try:
            found = importlib.util.find_spec(spec) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(f"--plugin {spec}: no module named {spec!r} on this Python's path; "
                       "install it, or give the path of a .py file")
    return out


def secret_problems(settings: Settings) -> list[str]:
    """Credential references of the core settings that do not resolve."""
    where = f"{settings.config_path}: " if settings.config_path else ""
    out = []
    for name in ("upstream_api_key", "admin_key", "identity_secret"):
        ref = getattr(settings, name)
        if not ref:
            continue
        try:
            resolve(ref)
        except SecretError as exc:
            source = f"MIDWAY_{name.upper()}" if f"MIDWAY_{name.upper()}" in os.environ \
                else f"{where}[midway] {name}"
            out.append(f"{source}: {exc}; {fix(ref)}")
    for key in settings.client_keys:
        try:
            resolve(key.key)
        except SecretError as exc:
            out.append(f"{where}client key {key.name!r}: {exc}; {fix(key.key)}")
    return out


def fix(ref: str) -> str:
    """How to fix a reference that did not resolve."""
    if ref.startswith("env:"):
        return f"export {ref[4:]}, or change the reference"
    return "create the file, or change the reference"


def port_problem(settings: Settings) -> str | None:
    """Whether ``host:port`` can be listened on (the server binds it moments later)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        return bind_problem(settings, exc)
    finally:
        sock.close()
    return None


def bind_problem(settings: Settings, exc: OSError) -> str:
    """One line for a failure to listen on ``host:port``."""
    where = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"port {settings.port} on {settings.host} is in use (another midway? "
                f"`midway status --port {settings.port}`); stop it or pass --port N")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine; fix --host"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; use a port above 1023"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def warnings(settings: Settings) -> list[str]:
    """Settings that work but probably do not do what was meant."""
    doubled = doubled_v1(settings.upstream, "upstream")
    return [doubled] if doubled else []


def doubled_v1(url: str, label: str) -> str | None:
    """A warning for an Anthropic base URL ending in ``/v1``: midway appends the client's path,
    which starts with ``/v1`` already."""
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        return None
    return (f"{label} {url} ends in /v1, but clients' paths already start with /v1 (requests "
            f"would go to {base}/v1/messages); use {base[:-3]}")
