"""Model discovery: ``GET /v1/models`` (and ``/v1/models/{id}``) answered by midway itself from
its configuration — the ``[[models.list]]`` entries and the models plugins route by name
(``list_models``) — in Anthropic's list format, filtered by the caller's key scope.

Claude Code (``CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY=1``) asks for
``/v1/models?limit=1000`` with a 3 s budget and treats a redirect as a failure: the list is
built once at start-up and answered from memory.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote

import attrs
import orjson

from midway.answer import MemoryAnswer
from midway.errors import MidwayError
from midway.options import option
from midway.services import ServiceKey

if TYPE_CHECKING:
    from midway.context import Midway
    from midway.exchange import Exchange

PREFIX = "/v1/models"
DEFAULT_LIMIT = 20  # Anthropic's default page size
MAX_LIMIT = 1000
MAX_ID = 256
# What a model id may hold: Anthropic's and the vendors' spellings (dots, colons, @, slashes).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
_ENTRY_KEYS = ("id", "display_name", "description", "created_at")
EPOCH = "1970-01-01T00:00:00Z"


@attrs.frozen
class ModelEntry:
    """One model of the list: what ``/v1/models`` shows for it."""

    id: str
    display_name: str
    description: str = ""
    created_at: str = EPOCH

    def wire(self) -> dict[str, str]:
        return {"type": "model", "id": self.id, "display_name": self.display_name,
                "description": self.description, "created_at": self.created_at}


def model_entry(raw: Any, where: str) -> ModelEntry:
    """A ``{id, display_name, description, created_at}`` table checked (``ValueError``
    saying what is wrong, ``where`` naming it)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table with an id")
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(_ENTRY_KEYS)})")
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not _ID.fullmatch(model_id) or len(model_id) > MAX_ID:
        raise ValueError(f"{where}: id must be a model name (letters, digits, . _ : @ / + -; "
                         f"at most {MAX_ID} characters), got {model_id!r}")
    texts = {}
    for key in ("display_name", "description"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string")
        texts[key] = value
    created = raw.get("created_at", EPOCH)
    if isinstance(created, datetime):  # TOML's own date-time type
        created = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif not isinstance(created, str):
        raise ValueError(f"{where}: created_at must be an RFC 3339 date-time")
    else:
        try:
            datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{where}: created_at must be an RFC 3339 date-time, got "
                             f"{created!r}") from None
    return ModelEntry(id=model_id, display_name=texts["display_name"] or model_id,
                      description=texts["description"] or "", created_at=created)


def _entries(value: Any) -> tuple[ModelEntry, ...]:
    if not isinstance(value, list):
        raise ValueError("expected an array of tables ([[models.list]])")
    entries = tuple(model_entry(raw, f"#{i + 1}") for i, raw in enumerate(value))
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"model {entry.id!r} is listed twice")
        seen.add(entry.id)
    return entries


@attrs.frozen
class ModelsConfig:
    """The ``[models]`` table (docs/configuration.md, "Model discovery")."""

    discovery: Literal["auto", "local", "upstream"] = option(
        "auto", help="who answers GET /v1/models: local (midway, from this table and the "
        "router's named routes), upstream (forwarded), or auto: local when [[models.list]] "
        "has entries, else upstream")
    list: tuple[ModelEntry, ...] = option(
        (), converter=_entries, help="[[models.list]]: the models /v1/models shows (id, "
        "display_name, description, created_at)")


class ModelDirectory:
    """The list ``/v1/models`` answers with, built once per running midway."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self.entries = list(entries)
        self._by_id = {entry.id: entry for entry in self.entries}

    @classmethod
    def of(cls, midway: Midway) -> ModelDirectory | None:
        """The directory this configuration serves, or ``None`` when ``/v1/models`` is
        forwarded upstream (``discovery = "upstream"``, or ``auto`` with nothing listed)."""
        config = midway.options("models", ModelsConfig)
        # auto: only a [[models.list]] switches discovery to midway; a router rule naming a
        # model alone must not shrink what clients see to that one name.
        if config.discovery == "upstream" or (config.discovery == "auto" and not config.list):
            return None
        entries = {entry.id: entry for entry in config.list}
        for impl in midway.plugins.impls("list_models"):
            try:
                found = impl.function(*[midway for _ in impl.argnames])
                listed = [raw if isinstance(raw, ModelEntry) else
                          model_entry(raw, f"{impl.plugin}: model #{i + 1}")
                          for i, raw in enumerate(found or ())]
            except Exception:
                midway.plugins.failed(impl.plugin, "list_models")
                continue
            for entry in listed:
                entries.setdefault(entry.id, entry)  # the [models] table's entry wins
        return cls(entries.values())

    @classmethod
    def publish(cls, midway: Midway) -> None:
        """Build the directory at start-up (after ``startup``) and publish it as
        ``midway.services[MODELS]`` when midway answers ``/v1/models`` itself."""
        directory = cls.of(midway)
        if directory is not None:
            midway.services[MODELS] = directory

    def describe(self) -> str:
        return f"GET /v1/models answered by midway: {len(self.entries)} model(s)"

    def answer(self, exchange: Exchange) -> MemoryAnswer | None:
        """The answer to a ``/v1/models`` request, or ``None`` when it is not one (another
        method, another path)."""
        request = exchange.request
        path = request.path
        if request.method not in ("GET", "HEAD") or not (
                path == PREFIX or path.startswith(PREFIX + "/")):
            return None
        if exchange.principal.kind == "anonymous":
            # Pass-through gateways leave the key to the upstream, which is not asked here:
            # a caller that presents none is refused as Anthropic would refuse it.
            raise MidwayError(401, "x-api-key header is required")
        scope = exchange.principal.models
        if path == PREFIX:
            visible = [e for e in self.entries if _allowed(e.id, scope)]
            body = orjson.dumps(page(visible, request.query_string))
        else:
            model_id = unquote(path[len(PREFIX) + 1:])
            entry = self._by_id.get(model_id)
            if entry is None or not _allowed(entry.id, scope):
                # A model outside the key's scope is not found, as for a key that cannot see it.
                raise MidwayError(404, f"model: {model_id[:MAX_ID]!r} not found")
            body = orjson.dumps(entry.wire())
        return MemoryAnswer(200, {"content-type": "application/json"}, body)


def _allowed(model_id: str, scope: tuple[str, ...]) -> bool:
    return not scope or any(fnmatch.fnmatchcase(model_id, glob) for glob in scope)


def page(entries: list[ModelEntry], query_string: str) -> dict[str, Any]:
    """One page of ``entries`` as Anthropic's list (``limit``, ``after_id``, ``before_id``)."""
    query = parse_qs(query_string, keep_blank_values=True)
    raw = query.get("limit", [str(DEFAULT_LIMIT)])[-1]
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise MidwayError(400, f"limit: must be an integer from 1 to {MAX_LIMIT}, got "
                          f"{raw[:20]!r}")
    after = query.get("after_id", [None])[-1]
    before = query.get("before_id", [None])[-1]
    if after is not None and before is not None:
        raise MidwayError(400, "after_id and before_id cannot be used together")
    ids = [entry.id for entry in entries]
    if before is not None:
        end = ids.index(before) if before in ids else 0
        chosen = entries[max(end - limit, 0):end]
        more = end - limit > 0
    else:
        start = ids.index(after) + 1 if after in ids else (0 if after is None else len(ids))
        chosen = entries[start:start + limit]
        more = start + limit < len(entries)
    return {"data": [entry.wire() for entry in chosen], "has_more": more,
            "first_id": chosen[0].id if chosen else None,
            "last_id": chosen[-1].id if chosen else None}


#: the running instance's list (absent: ``/v1/models`` is forwarded upstream)
MODELS: ServiceKey[ModelDirectory] = ServiceKey("midway.models")
