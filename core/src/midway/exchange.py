"""The objects a request is made of on its way through midway: what plugins see and change."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson
from multidict import CIMultiDict

from midway.assemble import merge_usage

if TYPE_CHECKING:
    from midway.context import Midway

_UNSET: Any = object()


def new_request_id() -> str:
    """midway's own id for an exchange: unique, sortable by time, safe in logs."""
    # Not a secret: the random part only keeps ids apart within a nanosecond, so it comes from
    # `random` (reseeded in each forked worker), not a getrandom() syscall per request.
    return f"mw_{time.time_ns():x}{random.getrandbits(48):012x}"


class ErrorKind(enum.StrEnum):
    """Why an exchange or an attempt did not complete normally: ``Exchange.error_kind`` and
    ``Attempt.error_kind``, for plugins to match on (``error`` is the human-readable text)."""

    #: no connection to the upstream could be made (DNS, refused, TLS)
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    #: the upstream sent no response headers within the connect or idle timeout
    UPSTREAM_TIMEOUT = "upstream_timeout"
    #: the connection to the upstream failed in another way before an answer
    UPSTREAM_FAILED = "upstream_failed"
    #: the upstream's answer ended before its end after its head arrived: the connection
    #: broke, the body fell short of its length or framing, or a stream stopped before
    #: ``message_stop`` (``Exchange.upstream_cut_short`` is set)
    STREAM_BROKEN = "stream_broken"
    #: the upstream went silent for longer than the idle timeout in the middle of an answer
    STREAM_TIMEOUT = "stream_timeout"
    #: the streamed answer carried an ``event: error`` (e.g. ``overloaded_error``)
    STREAM_ERROR = "stream_error"
    #: the client went away before the answer was complete
    CLIENT_DISCONNECTED = "client_disconnected"
    #: the client read nothing of the answer for ``write_stall_timeout`` seconds and was
    #: disconnected (``client_disconnected`` is set too)
    CLIENT_STALLED = "client_stalled"
    #: midway was shutting down: a request that came during the drain, or one still open at
    #: its deadline, cut with an ``overloaded_error`` (the usage seen so far is on the exchange)
    SHUTDOWN = "shutdown"
    #: midway answered with an error of its own: a bad or unauthorised request, or a
    #: :class:`midway.MidwayError` a plugin raised on purpose
    REFUSED = "refused"
    #: a plugin failed in a hook whose failure fails the request
    PLUGIN_FAILED = "plugin_failed"
    #: a bug in midway
    INTERNAL = "internal"


#: The kinds that mean the upstream failed after bytes of its answer reached the client.
STREAM_FAILURES = frozenset({ErrorKind.STREAM_BROKEN, ErrorKind.STREAM_TIMEOUT})


# A top-level string longer than this is not kept once the parse is let go (``Request.release``):
# a ``system`` prompt given as one string can be tens of KB.
_KEPT_STRING = 256
# A tuple, not ``bool | int | float``: a union in an isinstance call is built at every call.
_SCALARS = (bool, int, float)


@attrs.define(eq=False)
class Request:
    """The client's request. ``body`` is kept as bytes; ``json`` is parsed on first use.

    Headers are the client's end-to-end headers (hop-by-hop ones removed); change them in
    place. Assigning ``json`` or ``body`` replaces what is forwarded; reading never does.

    Once the request has gone upstream the core lets the parsed JSON go (:meth:`release`),
    keeping only the body's small top-level values: a Claude Code request of a few hundred
    KB parses into several times that, which would otherwise live as long as its answer
    streams. :meth:`field` reads a top-level value either way; ``json`` still works after,
    by parsing the body again.
    """

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    _body: bytes
    _json: Any = _UNSET
    changed: bool = False
    # the body's small top-level values (numbers, booleans, null, short strings) once the
    # parse was let go; None while it is held, or was never made
    _fields: dict[str, Any] | None = None

    @property
    def body(self) -> bytes:
        if self.changed and self._json is not _UNSET:
            self._body = orjson.dumps(self._json)
            self.changed = False
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._json = _UNSET
        self._fields = None
        self.changed = False

    @property
    def json(self) -> Any:
        """The parsed body (``None`` when empty or not JSON)."""
        if self._json is _UNSET:
            try:
                self._json = orjson.loads(self._body) if self._body else None
            except orjson.JSONDecodeError:
                self._json = None
        return self._json

    @json.setter
    def json(self, value: Any) -> None:
        self._json = value
        self._fields = None
        self.changed = True

    def field(self, name: str) -> Any:
        """The body's top-level ``name`` (``None`` when absent, or the body is not a JSON
        object): from the parse if it is held, else from the small values kept when it was
        let go, else (a list, an object, a long string) by parsing the body again."""
        fields = self._fields
        if fields is not None and self._json is _UNSET:
            value = fields.get(name)
            if value is not _UNSET:
                return value
        body = self.json
        return body.get(name) if isinstance(body, dict) else None

    def release(self) -> None:
        """Let the parsed JSON go, keeping its small top-level values for :meth:`field` (the
        core calls this once the request went upstream and the answer is relayed)."""
        body = self._json
        if body is _UNSET:
            return
        if self.changed:
            self._body = orjson.dumps(body)
            self.changed = False
        # A list, a nested object or a long string is marked, and read by a second parse.
        self._fields = {k: v if v is None or isinstance(v, _SCALARS)
                        or (isinstance(v, str) and len(v) <= _KEPT_STRING) else _UNSET
                        for k, v in body.items()} if isinstance(body, dict) else {}
        self._json = _UNSET

    @property
    def parsed(self) -> bool:
        """Whether the body has been parsed (by a plugin or the core) already: its top-level
        values are known without parsing it (again)."""
        return self._json is not _UNSET or self._fields is not None

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path == "/v1/messages"


@attrs.define(eq=False)
class Response:
    """An answer: what a plugin returns from ``pre_request``, and what the upstream sent.

    For a plugin answer, give ``body`` (bytes, or any JSON-able object) or ``stream`` (an async
    iterator of bytes, e.g. replayed SSE). ``headers`` are added to the answer.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    stream: Any = None  # AsyncIterable[bytes] | None
    content_type: str | None = None

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes | bytearray | memoryview):
            return bytes(self.body)
        return orjson.dumps(self.body)


class Adapter(Protocol):
    """Translates between the Anthropic protocol the client speaks and another vendor's."""

    name: str

    def prepare(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        """Build the upstream request (method, URL, headers, body) for this exchange."""
        ...

    def translate_error(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        """Turn a vendor error body into Anthropic's error format."""
        ...

    def translate_json(self, exchange: Exchange, body: bytes) -> bytes:
        """Turn a vendor's complete (non-streaming) answer into an Anthropic message."""
        ...

    def stream_translator(self, exchange: Exchange) -> StreamTranslator:
        """A translator for one streaming answer."""
        ...


class StreamTranslator(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Vendor stream bytes in, Anthropic SSE bytes out (possibly empty)."""
        ...

    def close(self) -> bytes:
        """End of the vendor stream: any final Anthropic SSE bytes."""
        ...


@attrs.define
class PreparedRequest:
    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes
    streaming: bool = True


@attrs.define(eq=False)
class Upstream:
    """Where an attempt goes. Returned by ``choose_upstream``.

    ``headers`` are set on the upstream request (credentials go here: ``{"x-api-key": ...}``).
    When ``passthrough_auth`` is false the client's ``x-api-key`` and ``authorization`` headers
    are removed first. ``adapter`` translates for non-Anthropic vendors (``None``: native).
    ``key_id`` is a short, non-secret fingerprint of the credential, for reports.
    """

    url: str
    name: str = "default"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    passthrough_auth: bool = True
    adapter: Adapter | None = None
    key_id: str | None = None
    model: str | None = None  # rewrite the body's model to this for the attempt
    meta: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Retry:
    """Returned by ``upstream_response`` to drop an answer and try again after ``delay`` s."""

    delay: float = 0.0
    reason: str = ""


@attrs.define(eq=False)
class Attempt:
    """One upstream attempt of an exchange."""

    number: int
    id: str
    upstream: Upstream
    started: float  # time.monotonic()
    status: int | None = None
    headers: Mapping[str, str] | None = None  # the upstream's response headers
    error: str | None = None  # why there is no response (text)
    error_kind: ErrorKind | None = None  # why there is no response (to match on)
    retried: bool = False
    request_id: str | None = None  # the upstream's own ``request-id``
    # set after the answer: the body of a non-streaming error answer, for the router to read
    body: bytes | None = None


@attrs.define
class Usage:
    """Final token usage. Streams: last ``message_delta`` value per field, else message_start's."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    service_tier: str | None = None
    seen: bool = False  # False when no usage reached midway (error, no body, not messages)
    raw: dict[str, Any] = attrs.field(factory=dict)

    def update(self, usage: Mapping[str, Any]) -> None:
        """Apply a usage object; fields present override earlier values (never summed)."""
        if not isinstance(usage, _MAPPING):
            return
        self.seen = True
        raw = self.raw
        for key, value in usage.items():
            if value is not None:
                raw[key] = value
        self._read(raw)

    def merge(self, usage: dict[str, Any]) -> None:
        """Apply a stream's usage (``message_start``'s, then each ``message_delta``'s) as
        :class:`~midway.assemble.MessageAssembler` merges it: fields present override
        earlier values, except a 0 over a count, nested objects field by field."""
        self.seen = True
        merge_usage(self.raw, usage)
        self._read(self.raw)

    def _read(self, raw: dict[str, Any]) -> None:
        self.input_tokens = _int(raw.get("input_tokens"))
        self.output_tokens = _int(raw.get("output_tokens"))
        self.cache_creation_input_tokens = _int(raw.get("cache_creation_input_tokens"))
        self.cache_read_input_tokens = _int(raw.get("cache_read_input_tokens"))
        split = raw.get("cache_creation")
        if split is not None and isinstance(split, _MAPPING):
            self.cache_creation_5m_input_tokens = _int(split.get("ephemeral_5m_input_tokens"))
            self.cache_creation_1h_input_tokens = _int(split.get("ephemeral_1h_input_tokens"))
        else:
            # No split given: Anthropic's default cache TTL is 5 minutes.
            self.cache_creation_5m_input_tokens = self.cache_creation_input_tokens
            self.cache_creation_1h_input_tokens = 0
        stu = raw.get("server_tool_use")
        if stu is not None and isinstance(stu, _MAPPING):
            self.web_search_requests = _int(stu.get("web_search_requests"))
            self.web_fetch_requests = _int(stu.get("web_fetch_requests"))
        tier = raw.get("service_tier")
        self.service_tier = tier if isinstance(tier, str) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_5m_input_tokens": self.cache_creation_5m_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
            "web_search_requests": self.web_search_requests,
            "web_fetch_requests": self.web_fetch_requests,
        }


# dict first: isinstance against an ABC alone is a Python-level call (three an answer here)
_MAPPING = (dict, Mapping)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@attrs.define
class Principal:
    """Who sent a request. ``id`` is stable and never contains a secret."""

    id: str
    name: str
    team: str | None = None
    kind: str = "passthrough"  # passthrough | key | anonymous | oidc (a signed-in person)
    key_id: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    models: tuple[str, ...] = ()  # globs the principal may use; empty: any
    upstreams: tuple[str, ...] = ()  # upstream names it may reach; empty: any
    allow_project_header: bool = True
    # Ids of the keys this one was derived from, nearest first: their budgets cover it too.
    ancestors: tuple[str, ...] = ()
    # A signed-in person (kind "oidc"): the IdP's subject, e-mail and groups. Groups drive
    # policy (model allowlists, spend limits); API-key principals may carry groups too.
    subject: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "team": self.team,
                               "kind": self.kind, "key_id": self.key_id,
                               "labels": dict(self.labels)}
        if self.subject is not None:
            out.update(subject=self.subject, email=self.email, groups=list(self.groups))
        elif self.groups:
            out["groups"] = list(self.groups)
        return out


@attrs.define
class Timings:
    """Wall-clock start and durations in milliseconds (``None`` until known)."""

    started_at: float  # time.time() at arrival
    started: float  # time.monotonic() at arrival
    ttfb_ms: float | None = None  # first byte written to the client
    total_ms: float | None = None
    upstream_ttfb_ms: float | None = None  # first upstream response headers


@attrs.define(slots=True)
class KeptStream:
    """A streamed answer's bytes as the client received them (decoded), up to ``limit``."""

    limit: int
    # One growing buffer, not the list of chunks relayed: a slow stream's events come one a
    # read, and a bytes object of its own costs each about 40 bytes beside its data.
    data: bytearray = attrs.field(factory=bytearray)
    truncated: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:room]
            if not chunk:
                return
        self.data += chunk

    def value(self) -> bytes:
        """The bytes kept."""
        return bytes(self.data)


@attrs.define(eq=False)
class Exchange:
    """One request and its answer, as it flows through the hooks.

    Plugins share findings through ``annotations`` (e.g. billing's ``cost_usd``, the cache's
    ``cache``), and keep private per-request state in ``state`` under their own name.
    """

    id: str
    request: Request
    principal: Principal
    client_address: str
    timings: Timings
    midway: Midway | None = None
    upstream: Upstream | None = None
    attempts: list[Attempt] = attrs.field(factory=list)
    status: int | None = None
    response_body: bytes | None = None  # non-streaming answers (decoded), None for streams
    # response_body holds only the start of the answer: one over the relay's buffer limit,
    # kept up to the largest Midway.keep_stream_bodies (or not at all)
    response_body_truncated: bool = False
    # a streamed answer's bytes, kept when a plugin asked for them (Midway.keep_stream_bodies)
    kept_stream: KeptStream | None = None
    streaming: bool = False
    usage: Usage = attrs.field(factory=Usage)
    stop_reason: str | None = None
    response_model: str | None = None
    response_id: str | None = None  # the answer's message ``id`` (``msg_…``)
    upstream_request_id: str | None = None
    answered_by: str | None = None
    # Claude Code's subagent that sent the request, and its parent (midway.agents; checked):
    # None for the main agent and for clients that send no such header
    agent_id: str | None = None
    parent_agent_id: str | None = None
    error: str | None = None  # why the exchange did not complete normally (text)
    error_kind: ErrorKind | None = None  # the same, to match on
    # the answer reached its end: a stream's ``message_stop``, or a complete JSON message
    complete: bool = False
    # the upstream ended its answer early (connection lost, body shorter than its framing,
    # stream without ``message_stop``); the client's response was ended as broken too
    upstream_cut_short: bool = False
    error_type: str | None = None  # Anthropic error type of an error answer or event
    client_disconnected: bool = False
    annotations: dict[str, Any] = attrs.field(factory=dict)
    state: dict[str, Any] = attrs.field(factory=dict)
    # headers a plugin adds to a forwarded answer (e.g. ``x-midway-cache: miss``)
    extra_response_headers: dict[str, str] = attrs.field(factory=dict)
    # prefixes (lower case) of upstream response headers a plugin replaces for this client:
    # every upstream header starting with one is left out before extra_response_headers are
    # added (billing's spend limits replace the upstream's ``anthropic-ratelimit-unified-*``)
    drop_response_headers: tuple[str, ...] = ()
    # the plugins whose ``on_chunk`` sees this exchange's stream (see observe_stream), and
    # those of them that asked for the usage events alone
    stream_observers: list[object] = attrs.field(factory=list)
    usage_observers: list[object] = attrs.field(factory=list)
    # characters of text, thinking and tool input (``partial_json``) in the stream's
    # ``content_block_delta`` events read so far, counted while a usage observer watches; and
    # the count past which such an observer is shown each ``content_block_delta`` too
    streamed_text: int = 0
    streamed_text_mark: int | None = None
    # the wire format the client spoke: ``anthropic``, or ``vertex`` / ``bedrock``, whose
    # requests the core rewrote into Anthropic's before any hook (``request`` is the Messages
    # request; ``client_path`` the path the client sent)
    client_format: str = "anthropic"
    client_path: str | None = None

    def observe_stream(self, plugin: object, usage_only: bool = False) -> None:
        """Ask for this exchange's stream events: ``plugin``'s ``on_chunk`` fires for each
        (with ``usage_only``, for those carrying usage or outcome, and for the text past
        ``streamed_text_mark``: see the hook).

        ``plugin`` is the object registered as the plugin: ``self`` for a plugin object, the
        module for a module of hook functions (``sys.modules[__name__]``). Call it in
        ``pre_request``; a stream nobody asked to observe is relayed as raw chunks.
        """
        usage = self.usage_observers
        if any(p is plugin for p in self.stream_observers):
            if not usage_only:  # every event, as asked once
                usage[:] = [p for p in usage if p is not plugin]
            return
        self.stream_observers.append(plugin)
        if usage_only:
            usage.append(plugin)

    @property
    def model(self) -> str | None:
        """The model the client asked for (from the request body)."""
        model = self.request.field("model")
        return model if isinstance(model, str) else None

    def requested_models(self) -> list[str | None]:
        """Every model the request names: the body's ``model``, and for a batch
        (``/v1/messages/batches``) each request's ``params.model`` (``None`` for one that
        names none). Empty for a request that names no model."""
        body = self.request.json
        models: list[str | None] = []
        if not isinstance(body, dict):
            return models
        if isinstance(body.get("model"), str):
            models.append(body["model"])
        requests = body.get("requests")
        if self.request.path.startswith("/v1/messages/batches") and isinstance(requests, list):
            for entry in requests:
                params = entry.get("params") if isinstance(entry, dict) else None
                model = params.get("model") if isinstance(params, dict) else None
                models.append(model if isinstance(model, str) else None)
        return models

    @property
    def stream_body(self) -> bytes | None:
        """The SSE bytes of a streamed answer as the client received them (decoded), when a
        plugin asked the core to keep them; cut at the limit (``stream_truncated``)."""
        kept = self.kept_stream
        return kept.value() if kept is not None else None

    @property
    def stream_truncated(self) -> bool:
        return self.kept_stream is not None and self.kept_stream.truncated

    @property
    def stream_requested(self) -> bool:
        return self.request.field("stream") is True

    @property
    def unauthenticated(self) -> bool:
        """Nobody known made this request: midway refused it before knowing the caller (a bad
        key, a refused path or web page), or the upstream refused the client's own credential
        (401). Anyone can send these without limit, so their metrics share one label value
        and audit keeps them compact and rate-limited per client address."""
        return self.status == 401 or (self.principal.kind == "anonymous" and
                                      self.error_kind is ErrorKind.REFUSED and not self.attempts)

    @property
    def final_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def fail(self, kind: ErrorKind, message: str) -> None:
        """Record why the exchange did not complete normally; the first reason recorded stands."""
        if self.error is None:
            self.error = message
            self.error_kind = kind
