"""A plugin's config table, declared once: type, default and help of every setting.

A plugin declares its ``[name]`` table as an attrs class whose fields are :func:`option` (and
:func:`store_option`) calls, then builds it with :meth:`midway.Midway.options` at start-up or
:meth:`midway.config.Settings.options` in a command::

    @attrs.frozen
    class EchoConfig:
        enabled: bool = option(True, help="answer /v1/echo requests")
        ttl: float = option(3600.0, help="how long answers are kept", converter=parse_duration)
        token: str | None = option(None, help="upstream token (env:NAME / file:PATH)",
                                   converter=secret, secret=True)

    config = midway.options("echo", EchoConfig)

What :func:`load_table` guarantees, for every plugin alike:

* an unknown key is a :class:`~midway.config.ConfigError` naming the file, the table and the
  nearest valid key (``midway.toml: [echo] enabeld: unknown setting; did you mean `enabled`?``);
  every problem of a table is reported, one per line of the message, not just the first;
* each value is coerced to the declared type (``bool``, ``int``, ``float``, ``str``, ``Path``,
  ``Literal[...]``, ``X | None``, ``list``/``tuple``/``dict`` of those) or passed through the
  field's ``converter``; a bad one is a one-line error naming ``[table] key`` and what was
  expected (a ``secret=True`` value is never echoed);
* ``MIDWAY_<NAME>__<KEY>`` environment variables override keys, coerced the same way (lists and
  tables are written as TOML values: ``MIDWAY_ECHO__TAGS='["a", "b"]'``).

Shared converters: :func:`~midway.timeparse.parse_duration`, :func:`byte_size`, :func:`secret`,
and :func:`store_option` for a ``store`` setting (:func:`midway.storage.parse_store`). A
converter takes the raw value and returns the converted one, raising ``ValueError`` (or
:class:`~midway.config.ConfigError`) with a message saying what it expected.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from midway.config import ConfigError
from midway.secrets_ref import SecretError, resolve
from midway.storage.url import Kind, StoreURL, StoreURLError, parse_store

T = TypeVar("T")
Converter = Callable[[Any], Any]
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def option(default: Any = None, *, help: str, converter: Converter | None = None,
           gt: float | None = None, ge: float | None = None, secret: bool = False,
           factory: Callable[[], Any] | None = None) -> Any:
    """One setting of a plugin table: an ``attrs`` field carrying its help text.

    :param default: the value when the table does not set it (a list or dict is copied per
        instance).
    :param factory: instead of ``default``, builds the value when the table does not set it
        (e.g. a price table loaded from the package).
    :param help: one sentence for users; docs and ``midway config`` show it.
    :param converter: turns the raw TOML/env value into the field's value (instead of coercing
        to the declared type); raise ``ValueError`` saying what was expected.
    :param gt: numbers must be greater than this.
    :param ge: numbers must be at least this.
    :param secret: never show the value in an error message.
    """
    metadata = {"help": help, "converter": converter, "gt": gt, "ge": ge, "secret": secret}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    if isinstance(default, list | dict):
        return attrs.field(factory=lambda: type(default)(default), metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


@attrs.frozen
class _StoreSetting:
    default_file: str
    kinds: tuple[Kind, ...]


def store_option(default_file: str, *, help: str,
                 kinds: tuple[Kind, ...] = ("sqlite", "postgresql")) -> Any:
    """A ``store`` setting, read by :func:`midway.storage.parse_store` into a
    :class:`~midway.storage.StoreURL`: unset means ``default_file`` in the data dir.

    The field's value is a ``StoreURL``; :func:`load_table` needs ``data_dir`` to build it.
    """
    return attrs.field(default=None, metadata={
        "help": help, "converter": None, "gt": None, "ge": None, "secret": False,
        "store": _StoreSetting(default_file, kinds)})


@attrs.frozen
class OptionInfo:
    """What a table declares about one setting (for docs and checks)."""

    key: str
    type: str
    default: Any
    help: str


def declared(cls: type[Any]) -> list[OptionInfo]:
    """Every setting a table class declares, in declaration order."""
    attrs.resolve_types(cls)
    out = []
    for field in attrs.fields(cls):
        if "help" not in field.metadata:
            continue
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        out.append(OptionInfo(field.name, _describe(field.type), default, field.metadata["help"]))
    return out


def load_table(cls: type[T], name: str, table: Mapping[str, Any] | None, *,
               env: Mapping[str, str] | None = None, source: str | Path | None = None,
               data_dir: Path | None = None) -> T:
    """Build ``cls`` from the ``[name]`` table and ``MIDWAY_<NAME>__<KEY>`` overrides.

    :param cls: an attrs class whose fields are :func:`option` / :func:`store_option`.
    :param name: the table's name (``"cache"``), also the env prefix.
    :param table: the table as TOML gave it (``None``: absent).
    :param env: where overrides are read from (``None``: none; midway passes ``os.environ``).
    :param source: the config file, for messages.
    :param data_dir: where relative store paths live (needed by :func:`store_option` fields).
    :raises ConfigError: one line per problem, each naming the file or variable, ``[name]
        key`` and the problem. Errors raised by ``cls``'s own checks (``__attrs_post_init__``) are
        :class:`ConfigError` too.
    """
    declared_cls: Any = cls  # an attrs class; mypy cannot say so of a type variable
    attrs.resolve_types(declared_cls)
    fields = {f.name: f for f in attrs.fields(declared_cls) if "help" in f.metadata}
    where = f"{source}: " if source else ""
    raw: dict[str, tuple[Any, str]] = {}
    if table is not None and not isinstance(table, Mapping):
        raise ConfigError(f"{where}[{name}] must be a table")
    problems: list[str] = []  # every one is reported, one per line, not just the first
    for key, value in (table or {}).items():
        if _known(fields, name, key, where, problems):
            raw[key] = (value, where)
    prefix = f"MIDWAY_{name.upper().replace('-', '_')}__"
    for var, text in (env or {}).items():
        if var.startswith(prefix):
            key = var[len(prefix):].lower()
            if not _known(fields, name, key, f"{var}: ", problems):
                continue
            try:
                raw[key] = (_env_value(text, fields[key].type, f"{var}: [{name}] {key}"),
                            f"{var}: ")
            except ConfigError as exc:
                problems.append(str(exc))
    values = {}
    for key, field in fields.items():
        setting = field.metadata.get("store")
        if key not in raw and setting is None:
            continue
        value, origin = raw.get(key, (None, where))
        label = f"[{name}] {key}"
        try:
            values[key] = _convert(field, value, data_dir, label)
        except (ConfigError, SecretError, StoreURLError, ValueError, TypeError) as exc:
            message = str(exc)
            # parse_store already names the setting
            problems.append(f"{origin}{message}" if setting is not None
                            else f"{origin}{label}: {message}")
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def _known(fields: Mapping[str, Any], name: str, key: str, where: str,
           problems: list[str]) -> bool:
    """Whether ``key`` is declared; if not, say so in ``problems`` with the nearest one."""
    if key in fields:
        return True
    close = difflib.get_close_matches(key, fields, n=1)
    hint = (f"did you mean `{close[0]}`?" if close
            else f"known settings: {', '.join(fields) or 'none'}")
    problems.append(f"{where}[{name}] {key}: unknown setting; {hint}")
    return False


def _env_value(text: str, kind: Any, label: str) -> Any:
    """An environment variable's text: lists and tables as TOML values, the rest as is."""
    structured = _origin(_strip_none(kind)) in (list, tuple, dict)
    if structured or text.lstrip().startswith(("[", "{")):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            if structured:
                raise ConfigError(f"{label}: expected a TOML value like [\"a\", \"b\"] or "
                                  f"{{ k = \"v\" }}, got {text[:60]!r}") from None
    return text


def _convert(field: Any, value: Any, data_dir: Path | None, label: str) -> Any:
    meta = field.metadata
    setting: _StoreSetting | None = meta.get("store")
    if setting is not None:
        if data_dir is None:
            raise TypeError(f"{label} is a store setting: load_table needs data_dir")
        return parse_store(value, data_dir=data_dir, default_file=setting.default_file,
                           label=label, kinds=setting.kinds)
    converter = meta["converter"]
    try:
        result = converter(value) if converter is not None else _coerce(value, field.type)
    except SecretError:
        raise  # names the variable or file, never the secret
    except ValueError:
        if meta["secret"]:  # the message would quote the value
            raise ValueError(f"expected {_describe(field.type)}") from None
        raise
    if isinstance(result, int | float) and not isinstance(result, bool):
        if meta["gt"] is not None and not result > meta["gt"]:
            raise ValueError(f"expected a number > {meta['gt']:g}, got {value!r}")
        if meta["ge"] is not None and not result >= meta["ge"]:
            raise ValueError(f"expected a number >= {meta['ge']:g}, got {value!r}")
    return result


def _coerce(value: Any, kind: Any) -> Any:
    inner = _strip_none(kind)
    if inner is not kind and value is None:
        return None
    origin, args = _origin(inner), typing.get_args(inner)
    expected = _describe(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif inner in (int, float):
        number = _number(value, inner)
        if number is not None:
            return number
    elif inner is str:
        if isinstance(value, str):
            return value
    elif inner is Path:
        if isinstance(value, str | Path):
            return Path(value).expanduser()
    elif origin is Literal:
        if value in args:
            return value
    elif origin in (list, tuple):
        if isinstance(value, list | tuple):
            items = [_coerce(item, args[0]) for item in value]
            return items if origin is list else tuple(items)
    elif origin is dict:
        if isinstance(value, Mapping):
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    else:
        raise TypeError(f"type {expected} needs a converter in its option()")
    raise ValueError(f"expected {expected}, got {value!r}")


def _number(value: Any, kind: type[int] | type[float]) -> int | float | None:
    """``value`` as an ``int`` or ``float`` (text parsed, ``2.0`` is the integer 2), or None."""
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind is float:
        return float(value)
    return value if isinstance(value, int) else int(value) if value.is_integer() else None


def _strip_none(kind: Any) -> Any:
    if _origin(kind) in (types.UnionType, typing.Union):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _origin(kind: Any) -> Any:
    return typing.get_origin(kind)


def _describe(kind: Any) -> str:
    inner = _strip_none(kind)
    suffix = " (or unset)" if inner is not kind else ""
    origin, args = _origin(inner), typing.get_args(inner)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             Path: "a path", StoreURL: "a store"}
    if inner in words:
        text = words[inner]
    elif origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in args)
    elif origin in (list, tuple):
        text = f"a list ({_describe(args[0])} each)"
    elif origin is dict:
        text = "a table"
    else:
        text = getattr(inner, "__name__", str(inner))
    return text + suffix


# -- shared converters -----------------------------------------------------------------------

def schema_name(value: Any) -> str | None:
    """A PostgreSQL schema setting: a name, or unset (``None`` / ``""``: the default)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a PostgreSQL schema name, got {value!r}")
    return value


def secret(value: Any) -> str | None:
    """A credential: a literal, or ``env:NAME`` / ``file:PATH`` resolved now
    (:func:`midway.secrets_ref.resolve`); ``None`` stays unset."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string, env:NAME or file:PATH")
    return resolve(value)


def byte_size(value: Any) -> int:
    """Bytes: an integer, or text like ``"512KiB"``, ``"64MB"``, ``"1g"`` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is not None:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"expected a size in bytes (e.g. 1048576, 512KiB, 64MiB), got {value!r}")
