"""The forwarding path: one client request in, hooks around it, one upstream answer relayed."""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from midway import accesslog, batch_urls, bedrock_format, deadlines, paths, vertex_format
from midway.access import browser_refusal
from midway.agents import agent_ids
from midway.answer import (
    SSE,
    Answer,
    ClientAnswer,
    MemoryAnswer,
    PrefixedAnswer,
    TranslatedAnswer,
)
from midway.context import Midway
from midway.errors import MidwayError, error_event, error_response
from midway.exchange import (
    Attempt,
    ErrorKind,
    Exchange,
    KeptStream,
    PreparedRequest,
    Request,
    Response,
    Retry,
    Timings,
    Upstream,
    new_request_id,
)
from midway.headers import (
    CREDENTIAL_HEADERS,
    filter_accept_encoding,
    request_headers,
    response_headers,
)
from midway.heap import drop_read_buffer
from midway.identity import ANONYMOUS, authenticate_exchange
from midway.jsonscan import TopLevelScanner
from midway.metrics import Metrics
from midway.model_list import MODELS
from midway.observe import (
    OBSERVED_EVENTS,
    SKIP_PREFIXES,
    BodyObserver,
    StreamObserver,
    apply_message,
    decode_body,
    delta_text,
    final_event,
    run_text,
)
from midway.plugins import Impl, PluginFailed
from midway.secrets_ref import fingerprint, resolve
from midway.sse import SSEEvent, SSEParser
from midway.upstream_client import UnsupportedURL, UpstreamClient, UpstreamUnreachable
from midway.upstream_errors import connect_cause, public_url

# OTLP/HTTP export paths (Claude Code's telemetry): answered locally, never forwarded.
TELEMETRY_PATHS = frozenset({"/v1/logs", "/v1/metrics", "/v1/traces"})
log = logging.getLogger("midway.proxy")

# JSON answers up to this size are buffered (usage is read from them); larger or other
# answers are relayed chunk by chunk.
BUFFER_LIMIT = 32 * 1024 * 1024
# Error bodies up to this size are read for ``upstream_response`` to judge.
JUDGED_BODY_LIMIT = 1024 * 1024


class Proxy:
    """Serves ``/v1/*`` for one :class:`Midway` instance."""

    def __init__(self, midway: Midway) -> None:
        self.midway = midway
        settings = midway.settings
        self.plugins = midway.plugins
        self.key_mode = midway.key_mode  # else clients pass their own keys
        upstream_headers: dict[str, str] = {}
        if self.key_mode and settings.upstream_api_key:
            secret = resolve(settings.upstream_api_key)
            upstream_headers["x-api-key"] = secret
            key_id = fingerprint(secret)
        else:
            key_id = None
        self.default_upstream = Upstream(url=settings.upstream, name="default",
                                         headers=upstream_headers,
                                         passthrough_auth=not self.key_mode, key_id=key_id)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                             sock_read=settings.idle_timeout)
        self.max_body = settings.max_body_size
        # The lean client serves native upstreams; aiohttp's serves adapters and env proxies.
        self.fast: UpstreamClient | None = None
        if settings.upstream_client == "fast" and not settings.trust_env:
            self.fast = UpstreamClient(connect_timeout=settings.connect_timeout,
                                       idle_timeout=settings.idle_timeout,
                                       limit=settings.pool_size)
        # Sends a prepared request and returns the answer's head (``lean``: the lean client
        # may carry it). The seam midway.testing.Harness replaces with an in-memory upstream.
        self.send: Callable[[PreparedRequest, bool], Awaitable[Answer]] = self._send_http
        self.open_streams = 0
        self.finishing: set[asyncio.Task[None]] = set()  # post_response runs in flight
        # Shutdown (midway.server drains): requests being served, by the task serving each;
        # ``draining`` refuses new ones, ``cutting`` ends the open ones (see ``cut``).
        self.active: dict[asyncio.Task[Any], Exchange] = {}
        self.draining = False
        self.cutting = False
        self.deadline: float | None = None  # the drain's end (event loop time)
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves in (refresh)
        self.refresh()

    def refresh(self) -> None:
        """Cache which hooks have implementations (after plugins are loaded)."""
        p = self.plugins
        self.has_pre = p.has("pre_request")
        self.has_choose = p.has("choose_upstream")
        self.has_up_req = p.has("upstream_request")
        self.has_up_resp = p.has("upstream_response")
        self.models = self.midway.services.get(MODELS)  # None: /v1/models goes upstream
        # on_chunk implementations with the plugin object each belongs to (exchanges name the
        # plugins that observe their stream: Exchange.observe_stream)
        self.chunk_impls = [(p.pm.get_plugin(impl.plugin), impl) for impl in p.impls("on_chunk")]
        try:  # named to current_task, which otherwise asks for it with a getpid() per request
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop: the first request's is asked for
            self._loop = None
        self._callers: dict[tuple[tuple[bool, bool], ...], tuple[_Caller, ...]] = {}

    # -- shutdown ----------------------------------------------------------------------------

    async def drained(self, within: float) -> bool:
        """Wait up to ``within`` seconds until no request is being served; whether none is."""
        if self.active and within > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), within)
            except TimeoutError:
                pass
            finally:
                self._idle = None
        return not self.active

    def cut(self) -> int:
        """End every request still being served, now: a stream gets an ``event: error`` of
        type ``overloaded_error`` (clients retry elsewhere), a request not answered yet a 529;
        each is recorded with ``ErrorKind.SHUTDOWN`` and its usage so far. How many."""
        self.cutting = True
        for task in self.active:
            task.cancel()
        return len(self.active)

    # -- entry -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        exchange = Exchange(
            id=new_request_id(),
            request=Request(method=request.method, path=request.rel_url.raw_path,
                            query_string=request.rel_url.raw_query_string,
                            headers=request_headers(request.headers), body=b""),
            principal=ANONYMOUS,
            client_address=request.remote or "",
            timings=Timings(started_at=time.time(), started=now),
            midway=self.midway,
        )
        metrics = self.midway.metrics
        if metrics is not None:
            metrics.inflight += 1
        # (another loop than the one refresh() saw, e.g. in tests: the running loop's task)
        task = asyncio.current_task(self._loop) or asyncio.current_task()
        assert task is not None
        self.active[task] = exchange
        response: web.StreamResponse | None = None
        try:
            # The upstream's answer awaited from this frame (not from _answer's): each frame
            # in the chain a wait suspends costs its suspension and its resumption.
            answer = await self._answer(request, exchange)
            if answer is None:
                answer = await self._attempts(exchange)
            # Relayed from this frame: no frame of _answer's waits as long as a stream lasts.
            try:
                response = await self._relay(request, exchange, answer)
            finally:
                answer.release()
            return response
        except MidwayError as exc:
            response = await self._answer_error(request, exchange, exc)
            return response
        except asyncio.CancelledError:
            if self.cutting:
                exchange.fail(ErrorKind.SHUTDOWN, "cut by shutdown")
                if exchange.status is None:  # nothing of an answer went out yet
                    task.uncancel()
                    response = await self._answer_error(request, exchange, _shutting_down())
                    return response
                raise  # a body under way ends abnormally (the connection is dropped)
            _client_left(request, exchange)
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            _client_left(request, exchange)
            raise
        except Exception:
            log.exception("internal error serving %s", exchange.id)
            exchange.fail(ErrorKind.INTERNAL, "internal error")
            if exchange.timings.ttfb_ms is None:
                response = await self._answer_error(
                    request, exchange, MidwayError(500, "internal error in midway"))
                return response
            raise
        finally:
            del self.active[task]  # from here on, a shutdown waits for it in ``finishing``
            if self._idle is not None and not self.active:
                self._idle.set()
            if metrics is not None:
                metrics.inflight -= 1
            rest = self._finish(exchange)
            if rest is not None:
                # post_response must run to its end even if the client's disconnect cancels
                # this handler (during the hook or before it): it runs in a task of its own.
                task = asyncio.get_running_loop().create_task(rest)
                self.finishing.add(task)
                task.add_done_callback(self.finishing.discard)
                await asyncio.shield(task)

    async def _answer_error(self, request: web.Request, exchange: Exchange,
                            exc: MidwayError) -> web.StreamResponse:
        exchange.status = exc.status
        exchange.error_type = exc.error_type
        exchange.fail(exc.kind, exc.message)
        response = error_response(exc.status, exc.message, exchange.id, exc.error_type,
                                  exc.headers)
        await self._send(request, exchange, response)
        return response

    async def _send(self, request: web.Request, exchange: Exchange,
                    response: web.StreamResponse) -> None:
        await response.prepare(request)
        await response.write_eof()
        if exchange.timings.ttfb_ms is None:
            exchange.timings.ttfb_ms = (time.monotonic() - exchange.timings.started) * 1000

    def _finish(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Run ``post_response`` (the one place it runs) and record the exchange.

        Plain implementations run inline, in order; from the first that returns an awaitable
        on, the rest is returned as a coroutine for the caller to run to its end.
        """
        timings = exchange.timings
        timings.total_ms = (time.monotonic() - timings.started) * 1000
        if exchange.status is None:
            exchange.status = 499 if exchange.client_disconnected else 500
        pending = self._post(exchange, self.plugins.impls("post_response"))
        if pending is not None:
            return self._finish_awaiting(exchange, pending)
        self._record(exchange)
        return None

    async def _finish_awaiting(self, exchange: Exchange,
                               pending: tuple[str, Any, list[Impl]] | None) -> None:
        while pending is not None:
            plugin, awaitable, rest = pending
            try:
                await self.plugins.bounded(awaitable)
            except Exception:
                self.plugins.failed(plugin, "post_response")
            pending = self._post(exchange, rest)
        self._record(exchange)

    def _post(self, exchange: Exchange, impls: list[Impl]
              ) -> tuple[str, Any, list[Impl]] | None:
        """Call ``impls`` in order up to the first that returns an awaitable: that plugin,
        its awaitable and the implementations after it (``None`` when all are done)."""
        for index, impl in enumerate(impls):
            try:
                result = impl.function(*[exchange for _ in impl.argnames])
            except Exception:
                self.plugins.failed(impl.plugin, "post_response")
                continue
            if result is not None and inspect.isawaitable(result):
                return impl.plugin, result, impls[index + 1:]
        return None

    def _record(self, exchange: Exchange) -> None:
        metrics = self.midway.metrics
        if metrics is not None:
            _record_metrics(metrics, exchange)
        if self.midway.settings.access_log:
            accesslog.write(exchange, self.midway.settings.log_format)

    # -- the request -------------------------------------------------------------------------

    async def _answer(self, request: web.Request, exchange: Exchange) -> Answer | None:
        """The request read, authenticated and through the hooks: a plugin's (or midway's)
        answer for the caller to relay and release, or ``None``: the caller asks the upstream
        (:meth:`_attempts`)."""
        if self.draining:  # e.g. on a kept-alive connection, after the listener closed
            raise _shutting_down()
        # One spelling per route, before any hook; a Vertex or Bedrock request becomes the
        # Messages request it stands for, so every plugin sees one kind of exchange.
        raw_path = exchange.request.path
        vertex = vertex_format.parse(raw_path)
        bedrock = bedrock_format.parse(raw_path) if vertex is None else None
        if vertex is None and bedrock is None:
            paths.check(raw_path)
        refusal = browser_refusal(request, self.midway.settings, self.key_mode)
        if refusal is not None:
            raise MidwayError(403, refusal)
        exchange.request.body = await self._read_body(request, exchange)
        if vertex is not None:
            vertex_format.to_messages(exchange, vertex)
        elif bedrock is not None:
            bedrock_format.to_messages(exchange, bedrock)
        exchange.principal = await authenticate_exchange(self.midway, exchange)
        exchange.agent_id, exchange.parent_agent_id = agent_ids(exchange.request.headers)
        self._check_scope(exchange)

        answer: Answer | None = None
        if self.models is not None:
            answer = self.models.answer(exchange)
            if answer is not None:
                exchange.answered_by = "midway.models"
        if self.has_pre and answer is None:
            try:
                result, plugin = await self.plugins.first("pre_request", exchange=exchange)
            except PluginFailed as exc:
                raise _plugin_error(exchange, exc) from None
            if result is not None:
                exchange.answered_by = plugin
                answer = _plugin_answer(exchange, result)
        if answer is None and exchange.request.path in TELEMETRY_PATHS:
            # Claude Code's own OTLP export: no Anthropic-format upstream serves it, and
            # forwarding would hand a developer's telemetry to the model vendor.
            raise MidwayError(404, f"{exchange.request.path} is Claude Code's telemetry: "
                              "midway relays it only with the otel plugin's [otel] relay = "
                              "true (docs/otel.md)")
        return answer

    async def _read_body(self, request: web.Request, exchange: Exchange) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise MidwayError(413, f"request body of {length} bytes exceeds the limit of "
                              f"{self.max_body} bytes")
        # The chunks as aiohttp's parser made them, joined once (one chunk, the usual body:
        # not copied); request.read() would copy each into a bytearray, then that to bytes.
        payload = request.content
        raise_limit = getattr(payload, "set_read_chunk_size", None)  # aiohttp >= 3.13
        if raise_limit is not None and self.max_body:
            raise_limit(self.max_body)  # a compressed body decodes in large chunks, as read()
        parts: list[bytes] = []
        size = 0
        try:
            while not payload.at_eof():
                # A body that came whole with the head (most do) is taken without a wait.
                chunk = payload.read_nowait() if payload.is_eof() else await payload.readany()
                size += len(chunk)
                if self.max_body and size > self.max_body:
                    raise MidwayError(413, f"request body exceeds the limit of {self.max_body} "
                                      "bytes")
                if chunk:  # (b"" when the end came on its own)
                    parts.append(chunk)
        except RequestPayloadError:  # e.g. a content-encoding the body does not decode as
            raise MidwayError(400, "the request body could not be read (bad content-encoding "
                              "or framing)") from None
        drop_read_buffer(payload)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        # aiohttp has already decoded a gzip/deflate body, bounded by client_max_size (so a
        # compressed bomb ends as a 413); what goes upstream is the plain body.
        exchange.request.headers.popall("content-encoding", None)
        return body

    def _check_scope(self, exchange: Exchange) -> None:
        models = exchange.principal.models
        if not models:
            return
        # Every model the request names: the body's, and each request's in a batch.
        for model in exchange.requested_models():
            if model is None:
                raise MidwayError(403, "this key is limited to some models: every request "
                                  "in a batch must name one")
            if not any(fnmatch.fnmatchcase(model, g) for g in models):
                raise MidwayError(403, f"this key may not use model {model[:100]!r}")

    # -- upstream attempts -------------------------------------------------------------------

    async def _attempts(self, exchange: Exchange) -> Answer:
        max_attempts = self.midway.settings.max_attempts
        while True:
            upstream = await self._choose(exchange) if self.has_choose else \
                self.default_upstream
            exchange.upstream = upstream
            number = len(exchange.attempts) + 1
            attempt = Attempt(number=number, id=f"{exchange.id}.{number}", upstream=upstream,
                              started=time.monotonic())
            exchange.attempts.append(attempt)
            if self.has_up_req:
                await self._call_strict(exchange, "upstream_request", attempt=attempt)
            resp: Answer | None = None
            try:
                resp = await self._send_upstream(exchange, upstream)
            except MidwayError as exc:
                attempt.error = exc.message
                attempt.error_kind = exc.kind
                attempt.status = None
                failure: MidwayError | None = exc
            else:
                failure = None
                attempt.status = resp.status
                attempt.headers = resp.headers
                attempt.request_id = resp.headers.get("request-id")
                if exchange.timings.upstream_ttfb_ms is None:
                    exchange.timings.upstream_ttfb_ms = \
                        (time.monotonic() - exchange.timings.started) * 1000
            retry: Retry | None = None
            if self.has_up_resp and number < max_attempts:
                if resp is not None and resp.status >= 400 and \
                        SSE not in resp.headers.get("content-type", ""):
                    # Let the judge read a (small) error body; it is relayed as is if kept.
                    resp = await _judged(exchange, attempt, resp)
                retry = await self._call_first_strict(exchange, "upstream_response",
                                                      attempt=attempt)
            if isinstance(retry, Retry):
                attempt.retried = True
                if resp is not None:
                    resp.release()
                if retry.delay > 0:
                    await asyncio.sleep(retry.delay)
                continue
            if failure is not None:
                raise failure
            assert resp is not None
            exchange.upstream_request_id = attempt.request_id
            return resp

    async def _choose(self, exchange: Exchange) -> Upstream:
        """``choose_upstream``'s upstream (called only when it has implementations)."""
        upstream = await self._call_first_strict(exchange, "choose_upstream")
        if upstream is None:
            return self.default_upstream
        if not isinstance(upstream, Upstream):
            raise MidwayError(500, "a midway plugin returned an invalid upstream",
                              kind=ErrorKind.PLUGIN_FAILED)
        if exchange.principal.upstreams and upstream.name not in exchange.principal.upstreams:
            raise MidwayError(403, f"this key may not use upstream {upstream.name!r}")
        return upstream

    async def _call_strict(self, exchange: Exchange, hook: str, **kwargs: Any) -> None:
        try:
            await self.plugins.each(hook, swallow=False, exchange=exchange, **kwargs)
        except PluginFailed as exc:
            raise _plugin_error(exchange, exc) from None

    async def _call_first_strict(self, exchange: Exchange, hook: str, **kwargs: Any) -> Any:
        try:
            result, _ = await self.plugins.first(hook, exchange=exchange, **kwargs)
        except PluginFailed as exc:
            raise _plugin_error(exchange, exc) from None
        return result

    def _prepare_native(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        req = exchange.request
        headers = CIMultiDict(req.headers)
        if not upstream.passthrough_auth:
            for name in CREDENTIAL_HEADERS:
                headers.popall(name, None)
        for key, value in upstream.headers.items():
            headers[key] = value
        if self.key_mode and upstream.passthrough_auth and not any(
                name in headers for name in CREDENTIAL_HEADERS):
            # Clients present midway keys, which never leave: an upstream that names no
            # credential of its own gets the configured upstream key.
            for key, value in self.default_upstream.headers.items():
                headers.setdefault(key, value)
        # Events are parsed from plain bytes only: a stream someone observes is not encoded.
        headers["accept-encoding"] = "identity" if exchange.stream_observers else \
            filter_accept_encoding(headers.get("accept-encoding"))
        body = req.body
        if upstream.model and isinstance(req.json, dict) and req.json.get("model") != \
                upstream.model:
            body = orjson.dumps({**req.json, "model": upstream.model})
        # From the normal path only (a plugin may have changed it): no `..` leaves the prefix.
        path = paths.check(req.path)
        query = f"?{req.query_string}" if req.query_string else ""
        return PreparedRequest(method=req.method, url=upstream.url.rstrip("/") + path + query,
                               headers=headers, body=body)

    async def _send_upstream(self, exchange: Exchange, upstream: Upstream) -> Answer:
        adapter = upstream.adapter
        if adapter is not None:
            prepared = adapter.prepare(exchange, upstream)
        else:
            prepared = self._prepare_native(exchange, upstream)
        try:
            answer = await self.send(prepared, adapter is None)
        except (aiohttp.ClientConnectorError, UpstreamUnreachable,
                aiohttp.ConnectionTimeoutError) as exc:
            where = f"upstream {upstream.name} at {public_url(upstream.url)}"
            cause = connect_cause(exc)
            log.warning("%s is unreachable: %s", where, cause)
            raise MidwayError(502, f"{where} is unreachable: {cause}",
                              kind=ErrorKind.UPSTREAM_UNREACHABLE) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise MidwayError(504, f"upstream {upstream.name} at {public_url(upstream.url)} "
                              "timed out", kind=ErrorKind.UPSTREAM_TIMEOUT) from None
        except aiohttp.ClientError as exc:
            raise MidwayError(502, f"upstream {upstream.name} at {public_url(upstream.url)} "
                              f"failed: {connect_cause(exc)}",
                              kind=ErrorKind.UPSTREAM_FAILED) from None
        # Another vendor's answer is read through its adapter: the relay sees Anthropic's.
        return answer if adapter is None else TranslatedAnswer(answer, adapter, exchange)

    def _send_http(self, prepared: PreparedRequest, lean: bool) -> Awaitable[Answer]:
        # The lean client's coroutine itself is awaited (no coroutine of this method's in
        # the chain the upstream's wait suspends).
        fast = self.fast
        if lean and fast is not None and prepared.method != "HEAD":
            try:
                return fast.request(prepared.method, prepared.url, prepared.headers,
                                    prepared.body)
            except UnsupportedURL:
                pass  # e.g. credentials in the URL: aiohttp's client handles those
        return self._send_aiohttp(prepared)

    async def _send_aiohttp(self, prepared: PreparedRequest) -> Answer:
        session = self.midway.session
        assert session is not None
        # encoded=True: the client's path and query go out byte for byte, not requoted.
        return ClientAnswer(await session.request(
            prepared.method, URL(prepared.url, encoded=True), data=prepared.body or None,
            headers=prepared.headers, allow_redirects=False, timeout=self.timeout))

    # -- relaying the answer -----------------------------------------------------------------

    def _relay(self, request: web.Request, exchange: Exchange, answer: Answer
               ) -> Coroutine[Any, Any, web.StreamResponse]:
        """The coroutine that relays ``answer``: a plain function, so that no frame of its
        own waits as long as a stream lasts (one held per open stream)."""
        exchange.request.release()  # the request is sent: its parse need not last the answer
        exchange.status = answer.status
        headers = response_headers(answer.headers)
        headers["x-midway-request-id"] = exchange.id
        if exchange.answered_by is None:  # the upstream's answer, not a plugin's
            prefixes = exchange.drop_response_headers
            if prefixes:  # rarely set: no walk over every header on each answer
                for name in {k for k in headers if k.lower().startswith(prefixes)}:
                    del headers[name]
            for name, value in exchange.extra_response_headers.items():
                headers[name] = value
        content_type = answer.headers.get("content-type", "")
        encoding = answer.headers.get("content-encoding")
        body = answer.body
        if body is not None:
            return self._answer_body(request, exchange, answer.status, headers, body,
                                     encoding)
        if SSE in content_type:
            return self._relay_stream(request, exchange, answer, headers, encoding)
        # A batch's results file (JSONL) is read like a JSON answer: billing prices it; and
        # any other batch answer is, whatever its type: its results_url is rewritten.
        path = exchange.request.path
        return self._relay_body(request, exchange, answer, headers, encoding,
                                "json" in content_type or path.startswith(batch_urls.PREFIX))

    async def _answer_body(self, request: web.Request, exchange: Exchange, status: int,
                           headers: CIMultiDict[str], body: bytes,
                           encoding: str | None = None) -> web.StreamResponse:
        decoded = decode_body(body, encoding, BUFFER_LIMIT)
        if decoded is not None and exchange.client_format == "anthropic" and \
                batch_urls.applies(exchange.request.path):
            rewritten = batch_urls.rewrite(decoded)
            if rewritten is not None:  # sent decoded: re-encoding would gain nothing
                body = decoded = rewritten
                encoding = None
                headers.popall("content-encoding", None)
        if exchange.client_format == bedrock_format.FORMAT and not encoding:
            body = bedrock_format.json_answer(exchange, status, body)
        response = web.Response(status=status, body=body, headers=headers)
        try:
            await self._send(request, exchange, response)
        finally:
            # Read once the answer is out (the client does not wait for it), and whether or
            # not the client stayed for it: its usage is owed all the same.
            if decoded is not None:
                exchange.response_body = decoded
                apply_message(exchange, decoded)
        return response

    async def _relay_body(self, request: web.Request, exchange: Exchange, answer: Answer,
                          headers: CIMultiDict[str], encoding: str | None, json: bool
                          ) -> web.StreamResponse:
        """An answer that is not an event stream. JSON is buffered up to ``BUFFER_LIMIT``
        and answered whole; past that limit, and for other types, it is relayed as it comes
        (JSON read on the way for usage). An answer the upstream cut short never reaches the
        client as a complete one: before the head went out it becomes a 502 (504 if the
        upstream went silent), after it the response is left unterminated."""
        length = answer.content_length
        if json and length is not None and length <= BUFFER_LIMIT:  # the common answer
            try:
                body = await answer.read()
            except _UPSTREAM_FAILURES as exc:
                raise _cut_short(exchange, exc) from None
            return await self._answer_body(request, exchange, answer.status, headers, body,
                                           encoding)
        source = answer.chunks()
        parts: list[bytes] = []
        size = 0
        # no length, no chunking: only a well-formed JSON body tells the end from a cut
        close_delimited = length is None and "transfer-encoding" not in answer.headers
        if json:
            try:
                while size <= BUFFER_LIMIT:
                    chunk = await anext(source, b"")
                    if not chunk:
                        body = b"".join(parts)
                        del parts[:]
                        if close_delimited and not _json_ended(body, encoding):
                            raise _EndedEarly("ended its JSON answer unfinished")
                        return await self._answer_body(request, exchange, answer.status,
                                                       headers, body, encoding)
                    parts.append(chunk)
                    size += len(chunk)
            except _UPSTREAM_FAILURES as exc:
                raise _cut_short(exchange, exc) from None
        observer = BodyObserver(exchange, encoding, min(self.midway.stream_bytes_kept,
                                                        BUFFER_LIMIT)) if json else None
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        response.headers.clear()  # sent: not held as long as the body is relayed
        timings = exchange.timings
        self.open_streams += 1
        metrics = self.midway.metrics
        if metrics is not None:
            metrics.open_streams += 1
        try:
            parts.reverse()  # written in order, each let go of once it is out
            while parts:
                chunk = parts.pop()
                if observer is not None:
                    observer.feed(chunk)
                await response.write(chunk)
            async for chunk in source:
                if observer is not None:
                    observer.feed(chunk)
                await response.write(chunk)
                if timings.ttfb_ms is None:
                    timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
            if observer is not None and close_delimited and observer.readable and \
                    not observer.complete:
                raise _EndedEarly("ended its JSON answer unfinished")
        except _UPSTREAM_FAILURES as exc:
            _cut_short(exchange, exc)
            _end_broken(request)
            return response
        finally:
            self.open_streams -= 1
            if metrics is not None:
                metrics.open_streams -= 1
            if observer is not None:
                observer.finish()
        if timings.ttfb_ms is None:
            timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
        await response.write_eof()
        return response

    async def _relay_stream(self, request: web.Request, exchange: Exchange, answer: Answer,
                            headers: CIMultiDict[str], encoding: str | None
                            ) -> web.StreamResponse:
        exchange.streaming = True
        if self.midway.stream_bytes_kept:
            exchange.kept_stream = KeptStream(self.midway.stream_bytes_kept)
        # Events are parsed only for the plugins that asked (observe_stream), and only from
        # plain bytes; every other stream is relayed as raw chunks.
        callers = self._chunk_callers(exchange) if not encoding and \
            exchange.stream_observers else None
        source = answer.chunks()
        # A Bedrock client reads the same events as an event stream.
        bedrock = exchange.client_format == bedrock_format.FORMAT and not encoding
        response = bedrock_format.EventStreamResponse(answer.status, headers,
                                                      bedrock_format.frames(exchange)) \
            if bedrock else web.StreamResponse(status=answer.status, headers=headers)
        del headers  # the response copied them: not held as long as the stream lasts
        # The stream's writes are merged where nothing waits for it: the head with bytes
        # already in hand, the last bytes with the body's end (each write to a client costs
        # a system call and a wake-up of its reader).
        merging = not bedrock
        held = merging and answer.ready()
        if held:
            response._send_headers_immediately = False  # sent with the first write, now
        await response.prepare(request)
        response.headers.clear()  # sent (its copy, ~100 bytes a header)
        deadlines.streaming(request)  # its connection's between-requests timers go now
        timings = exchange.timings
        self.open_streams += 1
        metrics = self.midway.metrics
        if metrics is not None:
            metrics.open_streams += 1
        last = b""  # the stream's last bytes when they came with its end
        try:
            observable = True
            if callers:
                ended = answer.ended if merging else _never
                events_last = await self._relay_events(response, exchange, source, callers,
                                                       held, ended)
                if events_last is None:
                    await _close(response)  # a plugin ended it with an error event
                    return response
                last = events_last
            else:
                observer = StreamObserver(exchange, encoding)
                first = True
                async for chunk in source:
                    observer.feed(chunk)
                    if merging and answer.ended():
                        last = chunk  # written with the body's end (below)
                        break
                    await response.write(chunk)
                    if first:
                        timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
                        first = False
                    chunk = b""  # not held while the next is awaited
                observer.close()
                observable = observer.readable
            if not exchange.complete and exchange.error_kind is not ErrorKind.STREAM_ERROR \
                    and exchange.answered_by is None and answer.status < 300 and observable:
                # A message stream ends with message_stop or an error event; one that just
                # stops was cut short, whatever its HTTP framing said.
                if last:
                    await response.write(last)
                raise _EndedEarly("ended the stream early")
        except _UPSTREAM_FAILURES as exc:
            # The upstream failed after bytes went out: say so in-band; never splice or retry.
            timeout = _cut_short(exchange, exc).kind is ErrorKind.STREAM_TIMEOUT
            if encoding:  # no plain-text event fits in an encoded stream: end it broken
                _end_broken(request)
                return response
            event = error_event(
                "upstream stream timed out" if timeout else
                f"upstream {exc}" if isinstance(exc, _EndedEarly) else "upstream connection lost")
            if exchange.kept_stream is not None:
                exchange.kept_stream.add(event)
            await response.write(event)
            await _close(response)
            return response
        except asyncio.CancelledError:
            if not self.cutting or encoding:  # an encoded stream is dropped, not appended to
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            exchange.fail(ErrorKind.SHUTDOWN, "cut by shutdown")
            exchange.error_type = "overloaded_error"
            await response.write(error_event(SHUTTING_DOWN, "overloaded_error"))
            await _close(response)
            return response
        finally:
            self.open_streams -= 1
            if metrics is not None:
                metrics.open_streams -= 1
        await response.write_eof(last)
        if timings.ttfb_ms is None:
            timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
        return response

    def _chunk_callers(self, exchange: Exchange) -> tuple[_Caller, ...]:
        observers, usage = exchange.stream_observers, exchange.usage_observers
        # Each on_chunk implementation: observed, usage only. Streams observed alike share
        # one tuple of callers (a list, a tuple and a partial per caller held by each open
        # stream were ~400 bytes).
        key = tuple((any(owner is o for o in observers), any(owner is o for o in usage))
                    for owner, _ in self.chunk_impls)
        callers = self._callers.get(key)
        if callers is None:
            callers = self._callers[key] = tuple(
                (impl, *_chunk_caller(impl), usage_only)
                for (_, impl), (observed, usage_only) in zip(self.chunk_impls, key, strict=True)
                if observed)
        return callers

    async def _relay_events(self, response: web.StreamResponse, exchange: Exchange,
                            source: AsyncIterator[bytes], callers: tuple[_Caller, ...],
                            held: bool,
                            ended: Callable[[], bool]) -> bytes | None:
        """Relay ``source`` event by event through ``callers``, but for the body's last bytes
        (those that came with its end, ``ended()`` says), returned for the caller to write
        with the end; ``None`` when a plugin ended the stream (an ``on_chunk`` raised
        :class:`MidwayError`: its error event went out last). ``held``: the head waits for
        the first write (it goes alone when the first bytes relay nothing, e.g. half an
        event). Usage-only callers see the usage and outcome events, and the text past
        ``exchange.streamed_text_mark``; while they are all there is, the content events
        between two usage events are relayed as their bytes, their text counted unparsed."""
        parser = SSEParser()
        observer = StreamObserver(exchange)
        timings = exchange.timings
        plugins = self.plugins
        kept = exchange.kept_stream
        every = not all(usage_only for _, _, _, usage_only in callers)
        counting = len(exchange.usage_observers) > 0
        events: list[SSEEvent] = []
        items: Sequence[SSEEvent | bytes] = ()
        last = b""
        async for chunk in source:
            out: list[bytes] = []
            items = parser.feed(chunk) if every else parser.feed_runs(chunk, SKIP_PREFIXES)
            for item in items:
                if isinstance(item, bytes):  # content events, unparsed, nobody to see them
                    text = run_text(item)
                    mark = exchange.streamed_text_mark
                    if text is not None and (mark is None or
                                             exchange.streamed_text + text <= mark):
                        exchange.streamed_text += text
                        out.append(item)
                        continue
                    events = SSEParser().feed(item)  # one by one: counted exactly, shown
                else:
                    events = [item]
                for event in events:
                    name = event.name
                    shown = name in OBSERVED_EVENTS
                    if counting and name == "content_block_delta":
                        exchange.streamed_text += delta_text(event.json())
                        mark = exchange.streamed_text_mark
                        shown = mark is not None and exchange.streamed_text > mark
                    for impl, call, with_exchange, usage_only in callers:
                        if usage_only and not shown:
                            continue
                        try:
                            result = call(exchange, event) if with_exchange else call(event)
                            if result is not None:  # mostly None: keep the common path short
                                if impl.is_async or asyncio.iscoroutine(result):
                                    result = await plugins.bounded(result)
                                if isinstance(result, SSEEvent):
                                    event = result
                        except MidwayError as exc:
                            # On purpose: what was relayed stays, the event that raised does
                            # not, and the stream ends with the error (a plugin cannot answer
                            # twice).
                            exchange.fail(exc.kind, exc.message)
                            exchange.error_type = exc.error_type
                            out.append(error_event(exc.message, exc.error_type))
                            joined = b"".join(out)
                            if kept is not None:
                                kept.add(joined)
                            await response.write(joined)
                            return None
                        except Exception:
                            plugins.failed(impl.plugin, "on_chunk")
                    raw = event.raw
                    if raw:
                        if event.name in OBSERVED_EVENTS:
                            observer.observe(event)
                        out.append(raw)
            if out:
                joined = b"".join(out)
                if kept is not None:
                    kept.add(joined)
                if ended():
                    last = joined  # written with the body's end
                    break
                await response.write(joined)
                if timings.ttfb_ms is None:
                    timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
            elif held and not ended():  # the head is not held while more bytes are awaited
                await response.write(b"")
            held = False
            # Nothing of this chunk stays bound while the next is awaited (a slow stream
            # waits most of its life): its bytes, its events and their parsed JSON go now.
            chunk = joined = raw = b""
            event = _NO_EVENT
            item = b""
            events = []
            items = ()
            out.clear()
            result = None
        if parser.pending:  # a final event without its blank line: relay it as it came
            final = final_event(parser.pending)
            if final.name in OBSERVED_EVENTS:
                observer.observe(final)
            if kept is not None:
                kept.add(parser.pending)
            last += parser.pending
        return last


async def _judged(exchange: Exchange, attempt: Attempt, answer: Answer) -> Answer:
    """Read the start of an error answer into ``attempt.body`` for ``upstream_response``;
    the answer to relay in its place (the whole of it: a longer body keeps its rest)."""
    try:
        body = await answer.read(JUDGED_BODY_LIMIT + 1)
    except _UPSTREAM_FAILURES as exc:
        answer.release()
        raise _cut_short(exchange, exc) from None
    attempt.body = body[:JUDGED_BODY_LIMIT]
    if len(body) > JUDGED_BODY_LIMIT:
        return PrefixedAnswer(answer, body)
    return MemoryAnswer.buffered(answer, body)


def _client_left(request: web.Request, exchange: Exchange) -> None:
    exchange.client_disconnected = True
    stalled = request.get(deadlines.STALLED)
    if stalled is not None:
        exchange.fail(ErrorKind.CLIENT_STALLED, f"client read nothing for {stalled:g} s "
                      "(write_stall_timeout): disconnected")
    else:
        exchange.fail(ErrorKind.CLIENT_DISCONNECTED, "client disconnected")


SHUTTING_DOWN = "midway is shutting down; retry the request"


def _shutting_down() -> MidwayError:
    return MidwayError(529, SHUTTING_DOWN, kind=ErrorKind.SHUTDOWN)


def _plugin_error(exchange: Exchange, exc: PluginFailed) -> MidwayError:
    exchange.fail(ErrorKind.PLUGIN_FAILED, f"plugin {exc.plugin} failed in {exc.hook}")
    return MidwayError(500, f"a midway plugin ({exc.plugin}) failed in {exc.hook}")


# an on_chunk implementation, its call, whether the call takes (exchange, event) or (event),
# whether it observes usage only
_Caller = tuple[Impl, Callable[..., Any], bool, bool]


def _chunk_caller(impl: Impl) -> tuple[Callable[..., Any], bool]:
    """``on_chunk`` as a call of ``(exchange, event)``, or of ``(event)`` (the flag says which):
    the function itself in both usual cases (it runs for every event of every stream)."""
    fn, names = impl.function, impl.argnames
    if names == ("exchange", "event"):
        return fn, True
    if names == ("event",):
        return fn, False
    return lambda exchange, event: fn(*[exchange if a == "exchange" else event
                                        for a in names]), True


def _plugin_answer(exchange: Exchange, answer: Any) -> MemoryAnswer:
    """A plugin's ``pre_request`` answer as the relay sees every answer."""
    if not isinstance(answer, Response):
        raise MidwayError(500, f"plugin {exchange.answered_by} answered with "
                          f"{type(answer).__name__}, not midway.Response",
                          kind=ErrorKind.PLUGIN_FAILED)
    headers = CIMultiDict(answer.headers)
    if answer.stream is not None:
        headers.setdefault("content-type", answer.content_type or
                           "text/event-stream; charset=utf-8")
        return MemoryAnswer(answer.status, headers, stream=answer.stream)
    headers.setdefault("content-type", answer.content_type or "application/json")
    return MemoryAnswer(answer.status, headers, body=answer.body_bytes())


# How an upstream fails in the middle of an answer's body (both clients).
_UPSTREAM_FAILURES = (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                      aiohttp.ClientOSError, aiohttp.ServerTimeoutError)


_NO_EVENT = SSEEvent.dropped()  # what a loop's last event is rebound to once relayed


def _never() -> bool:
    return False


class _EndedEarly(aiohttp.ClientPayloadError):
    """An answer whose HTTP framing ended but whose content did not (a stream without
    ``message_stop``, a close-delimited JSON body unfinished)."""


def _cut_short(exchange: Exchange, exc: BaseException) -> MidwayError:
    """Record that the upstream's answer ended early (``exc``: how); the error to answer
    with if nothing was sent yet."""
    timeout = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
    exchange.upstream_cut_short = True
    exchange.error_type = "api_error"
    name = exchange.upstream.name if exchange.upstream is not None else "default"
    if timeout:
        exchange.error, exchange.error_kind = "upstream idle timeout", ErrorKind.STREAM_TIMEOUT
        return MidwayError(504, f"upstream {name} went silent in the middle of its answer",
                           kind=ErrorKind.STREAM_TIMEOUT)
    exchange.error = f"upstream {exc}" if isinstance(exc, _EndedEarly) else \
        f"upstream stream failed: {type(exc).__name__}"
    exchange.error_kind = ErrorKind.STREAM_BROKEN
    return MidwayError(502, f"upstream {name} ended its answer early",
                       kind=ErrorKind.STREAM_BROKEN)


def _end_broken(request: web.Request) -> None:
    """End the client's response as broken, never complete: the connection is closed after
    what was written, without the chunked body's last chunk (a response with a length falls
    short of it)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _json_ended(body: bytes, encoding: str | None) -> bool:
    """Whether a whole close-delimited body is a finished JSON value (empty or unreadable:
    assumed)."""
    decoded = decode_body(body, encoding, BUFFER_LIMIT)
    if not decoded:
        return True
    scanner = TopLevelScanner()
    scanner.feed(decoded)
    return scanner.complete or scanner.invalid


async def _close(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass


def _record_metrics(metrics: Metrics, exchange: Exchange) -> None:
    upstream = exchange.upstream.name if exchange.upstream else "none"
    if exchange.unauthenticated:
        # Anyone may send these, each with another key or model: one series for them all.
        model, principal = "none", "unauthenticated"
    else:
        # The answer's model (already parsed for usage); the request's only if a plugin
        # parsed it.
        model = exchange.response_model or \
            (exchange.model if exchange.request.parsed else None) or "none"
        model, principal = model[:80], exchange.principal.id[:80]
    metrics.requests[(str(exchange.status), model, upstream, principal)] += 1
    kind = "true" if exchange.streaming else "false"
    timings = exchange.timings
    if timings.total_ms is not None:
        metrics.latency[kind].observe(timings.total_ms / 1000)
    if timings.ttfb_ms is not None:
        metrics.ttfb[kind].observe(timings.ttfb_ms / 1000)
    for attempt in exchange.attempts:
        outcome = str(attempt.status) if attempt.status is not None else "error"
        metrics.attempts[(attempt.upstream.name, outcome)] += 1
    usage = exchange.usage
    if usage.seen:
        tokens = metrics.tokens
        for field in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                      "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens"):
            value = getattr(usage, field)
            if value:
                tokens[(field, model)] += value
