"""Settings: defaults, then the TOML file, then ``MIDWAY_*`` variables, then flags."""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

T = TypeVar("T")

DEFAULT_PORT = 8910
DEFAULT_UPSTREAM = "https://api.anthropic.com"
MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what and where."""


def default_data_dir() -> Path:
    """A per-user data folder: ``$XDG_DATA_HOME/midway`` or the platform's equivalent."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "midway"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "midway"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "midway"


@attrs.define
class ClientKey:
    """A midway key from config, mapped to a principal."""

    key: str  # literal or env:/file: reference
    name: str
    team: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    models: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    allow_project_header: bool = True
    groups: tuple[str, ...] = ()  # group policy applies to it (spend limits, budgets, routes)


@attrs.define
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    upstream: str = DEFAULT_UPSTREAM
    data_dir: Path = attrs.field(factory=default_data_dir)
    workers: int = 1
    plugins: list[str] | None = None  # None: every installed plugin; []: none
    extra_plugins: list[str] = attrs.field(factory=list)  # --plugin file.py / package.module
    idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    max_body_size: int = 64 * MiB
    # Client connections (midway.deadlines): none of these cuts a stream the client reads.
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    write_stall_timeout: float = 300.0
    pool_size: int = 256
    shutdown_timeout: float = 30.0
    max_attempts: int = 5
    hook_timeout: float = 30.0  # seconds an async hook implementation may take
    store_wait: float = 10.0  # seconds start-up waits for a store it cannot reach yet
    ready_timeout: float = 2.0  # seconds each plugin's check_ready may take (/readyz)
    drain_delay: float = 0.0  # seconds still listening after SIGTERM, /readyz 503
    allow_public: bool = False
    # Names and web origins /v1/* and /metrics answer besides loopback ones (midway.access).
    allowed_hosts: list[str] = attrs.field(factory=list)
    allowed_origins: list[str] = attrs.field(factory=list)
    metrics_auth: str = "auto"  # auto | none | local-or-admin | admin
    trust_env: bool = False
    upstream_api_key: str | None = None  # reference; used when clients present midway keys
    client_keys: list[ClientKey] = attrs.field(factory=list)
    admin_key: str | None = None  # reference; enables /_midway/admin and protects dashboards
    identity_secret: str | None = None  # reference; keys pass-through identities (see identity)
    log_format: str = "text"  # text | json
    log_level: str = "INFO"
    access_log: bool = True
    upstream_client: str = "fast"  # fast (midway.upstream_client) | aiohttp
    config_path: Path | None = None
    tables: dict[str, Any] = attrs.field(factory=dict)  # the whole TOML document

    def options(self, name: str, cls: type[T], data_dir: Path | None = None) -> T:
        """A plugin's declared table (:mod:`midway.options`): ``[name]`` from the config file,
        overridden by ``MIDWAY_<NAME>__<KEY>`` variables; unknown keys and bad values raise
        :class:`ConfigError`. Commands use this; a running plugin uses
        :meth:`midway.Midway.options`. ``data_dir`` defaults to the settings' data dir."""
        from midway.options import load_table  # options imports ConfigError from here

        return load_table(cls, name, self.tables.get(name), env=os.environ,
                          source=self.config_path,
                          data_dir=self.data_dir if data_dir is None else data_dir)

    def plugin_config(self, name: str) -> dict[str, Any]:
        """Config of one plugin as a loose dict: its TOML table, overridden by
        ``MIDWAY_<NAME>__<KEY>``. Plugins not yet declaring their table use this; prefer
        :meth:`options`."""
        table = dict(self.tables.get(name, {}) or {})
        prefix = f"MIDWAY_{name.upper().replace('-', '_')}__"
        for key, value in os.environ.items():
            if key.startswith(prefix):
                table[key[len(prefix):].lower()] = _parse_env_value(value)
        return table

    @property
    def client_keys_enabled(self) -> bool:
        """Whether clients must present a midway credential: client keys (config-defined or
        ``[keys] enabled``), or sign-in through an identity provider (``[identity]
        issuer``, the midway-identity plugin)."""
        return bool(self.client_keys) or bool(self.plugin_config("keys").get("enabled")) or \
            bool(self.plugin_config("identity").get("issuer"))


def _parse_env_value(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


_SCALARS: dict[str, type] = {
    "host": str, "port": int, "upstream": str, "workers": int, "idle_timeout": float,
    "connect_timeout": float, "max_body_size": int, "pool_size": int,
    "header_timeout": float, "body_timeout": float, "keepalive_timeout": float,
    "write_stall_timeout": float,
    "shutdown_timeout": float, "max_attempts": int, "hook_timeout": float,
    "ready_timeout": float, "drain_delay": float, "store_wait": float,
    "allow_public": bool, "trust_env": bool,
    "upstream_api_key": str, "admin_key": str, "identity_secret": str, "log_format": str,
    "log_level": str,
    "access_log": bool, "upstream_client": str, "metrics_auth": str,
}
_LISTS = ("allowed_hosts", "allowed_origins")  # TOML arrays; comma-separated in MIDWAY_*
METRICS_AUTH = ("auto", "none", "local-or-admin", "admin")


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _SCALARS[name]
    try:
        if kind is bool:
            if isinstance(value, str):
                parsed = _parse_env_value(value)
                if not isinstance(parsed, bool):
                    raise ValueError(value)
                return parsed
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, got {value!r}") from None


def _client_keys(entries: Any, source: str) -> list[ClientKey]:
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: [[midway.client_keys]] must be an array of tables")
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "key" not in entry or "name" not in entry:
            raise ConfigError(f"{source}: client key #{i + 1} needs at least 'key' and 'name'")
        keys.append(ClientKey(
            key=str(entry["key"]), name=str(entry["name"]), team=entry.get("team"),
            labels={str(k): str(v) for k, v in (entry.get("labels") or {}).items()},
            models=tuple(entry.get("models") or ()),
            upstreams=tuple(entry.get("upstreams") or ()),
            allow_project_header=bool(entry.get("allow_project_header", True)),
            groups=_groups(entry.get("groups"), f"{source}: client key #{i + 1}"),
        ))
    return keys


def _groups(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(g, str) and g.strip()
                                              for g in value):
        raise ConfigError(f"{where}: groups must be a list of group names, e.g. "
                          "groups = [\"ci\"]")
    return tuple(sorted({g.strip() for g in value}))


def _split_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def load_settings(config: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  **flags: Any) -> Settings:
    """Build settings. ``flags`` left as ``None`` do not override anything."""
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config or env.get("MIDWAY_CONFIG")
    if path:
        settings.config_path = Path(path).expanduser()
        try:
            with open(settings.config_path, "rb") as fh:
                settings.tables = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {settings.config_path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{settings.config_path}: invalid TOML: {exc}") from None
        core = settings.tables.get("midway", {})
        source = str(settings.config_path)
        for key, value in core.items():
            if key in _SCALARS:
                setattr(settings, key, _coerce(key, value, source))
            elif key == "data_dir":
                settings.data_dir = Path(str(value)).expanduser()
            elif key == "plugins":
                settings.plugins = [str(v) for v in value]
            elif key == "extra_plugins":
                settings.extra_plugins = [str(v) for v in value]
            elif key in _LISTS:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{source}: [midway] {key} must be a list of strings")
                setattr(settings, key, list(value))
            elif key == "client_keys":
                settings.client_keys = _client_keys(value, source)
            else:
                known = [*_SCALARS, "data_dir", "plugins", "extra_plugins", "client_keys"]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise ConfigError(f"{source}: [midway] {key}: unknown setting{hint}")
    for key in _SCALARS:
        name = f"MIDWAY_{key.upper()}"
        if name in env:
            setattr(settings, key, _coerce(key, env[name], name))
    if "MIDWAY_DATA_DIR" in env:
        settings.data_dir = Path(env["MIDWAY_DATA_DIR"]).expanduser()
    if "MIDWAY_PLUGINS" in env:
        settings.plugins = _split_list(env["MIDWAY_PLUGINS"])
    for key in _LISTS:
        if f"MIDWAY_{key.upper()}" in env:
            setattr(settings, key, _split_list(env[f"MIDWAY_{key.upper()}"]))
    for key, value in flags.items():
        if value is None or value == ():
            continue
        if key == "data_dir":
            settings.data_dir = Path(value).expanduser()
        elif key == "extra_plugins":
            settings.extra_plugins = [*settings.extra_plugins, *value]
        elif key in _SCALARS:
            setattr(settings, key, _coerce(key, value, f"--{key.replace('_', '-')}"))
        else:
            raise ConfigError(f"unknown setting {key}")
    if not settings.upstream.startswith(("http://", "https://")):
        raise ConfigError(f"upstream must be an http(s) URL, got {settings.upstream!r}")
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if settings.metrics_auth not in METRICS_AUTH:
        raise ConfigError(f"metrics_auth must be one of {', '.join(METRICS_AUTH)}, got "
                          f"{settings.metrics_auth!r}")
    if settings.upstream_client not in ("fast", "aiohttp"):
        raise ConfigError("upstream_client must be 'fast' or 'aiohttp'")
    if settings.store_wait < 0:
        raise ConfigError(f"store_wait must be at least 0 (seconds), got {settings.store_wait:g}")
    return settings
