"""The forwarding path: one client request in, hooks around it, one upstream answer relayed."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from midway import accesslog
from midway.answer import SSE, Answer, ClientAnswer, MemoryAnswer, TranslatedAnswer
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
from midway.identity import ANONYMOUS, ClientKeys, passthrough_principal, presented_credential
from midway.metrics import Metrics
from midway.observe import OBSERVED_EVENTS, StreamObserver, apply_message, decode_body
from midway.plugins import Impl, PluginFailed
from midway.secrets_ref import fingerprint, resolve
from midway.sse import SSEEvent, SSEParser
from midway.upstream_client import UnsupportedURL, UpstreamClient, UpstreamUnreachable

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
        self.client_keys = ClientKeys(settings)
        self.key_mode = bool(self.client_keys) or settings.client_keys_enabled
        self.authenticators: list[Any] = []  # extra key stores (see midway.keys)
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
        self.refresh()

    def refresh(self) -> None:
        """Cache which hooks have implementations (after plugins are loaded)."""
        p = self.plugins
        self.has_pre = p.has("pre_request")
        self.has_choose = p.has("choose_upstream")
        self.has_up_req = p.has("upstream_request")
        self.has_up_resp = p.has("upstream_response")
        # on_chunk implementations with the plugin object each belongs to (exchanges name the
        # plugins that observe their stream: Exchange.observe_stream)
        self.chunk_impls = [(p.pm.get_plugin(impl.plugin), impl) for impl in p.impls("on_chunk")]

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
        response: web.StreamResponse | None = None
        try:
            response = await self._serve(request, exchange)
            return response
        except MidwayError as exc:
            response = await self._answer_error(request, exchange, exc)
            return response
        except asyncio.CancelledError:
            exchange.client_disconnected = True
            exchange.fail(ErrorKind.CLIENT_DISCONNECTED, "client disconnected")
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            exchange.client_disconnected = True
            exchange.fail(ErrorKind.CLIENT_DISCONNECTED, "client disconnected")
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

    async def _serve(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        exchange.request.body = await self._read_body(request, exchange)
        await self._authenticate(exchange)
        self._check_scope(exchange)

        answer: Answer | None = None
        if self.has_pre:
            try:
                result, plugin = await self.plugins.first("pre_request", exchange=exchange)
            except PluginFailed as exc:
                raise _plugin_error(exchange, exc) from None
            if result is not None:
                exchange.answered_by = plugin
                answer = _plugin_answer(exchange, result)
        if answer is None:
            answer = await self._attempts(exchange)
        try:
            return await self._relay(request, exchange, answer)
        finally:
            answer.release()

    async def _read_body(self, request: web.Request, exchange: Exchange) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise MidwayError(413, f"request body of {length} bytes exceeds the limit of "
                              f"{self.max_body} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise MidwayError(413, f"request body exceeds the limit of {self.max_body} bytes"
                              ) from None
        except RequestPayloadError:  # e.g. a content-encoding the body does not decode as
            raise MidwayError(400, "the request body could not be read (bad content-encoding "
                              "or framing)") from None
        # aiohttp has already decoded a gzip/deflate body, bounded by client_max_size (so a
        # compressed bomb ends as a 413); what goes upstream is the plain body.
        exchange.request.headers.popall("content-encoding", None)
        return body

    async def _authenticate(self, exchange: Exchange) -> None:
        headers = exchange.request.headers
        credential = presented_credential(headers)
        if not self.key_mode:
            exchange.principal = passthrough_principal(credential)
            return
        principal = self.client_keys.lookup(credential)
        for store in self.authenticators:
            if principal is not None:
                break
            principal = store.lookup(credential)
            if inspect.isawaitable(principal):  # a store that had to ask its database
                principal = await principal
        # The client's midway key never leaves this process.
        for name in CREDENTIAL_HEADERS:
            headers.popall(name, None)
        if principal is None:
            raise MidwayError(401, "invalid x-api-key")
        exchange.principal = principal

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
            upstream = await self._choose(exchange)
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
                    attempt.body = await resp.read(JUDGED_BODY_LIMIT)
                    resp = MemoryAnswer.buffered(resp, attempt.body)
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
        if self.has_choose:
            upstream = await self._call_first_strict(exchange, "choose_upstream")
            if upstream is not None:
                if not isinstance(upstream, Upstream):
                    raise MidwayError(500, "a midway plugin returned an invalid upstream",
                                      kind=ErrorKind.PLUGIN_FAILED)
                if exchange.principal.upstreams and upstream.name not in \
                        exchange.principal.upstreams:
                    raise MidwayError(403, f"this key may not use upstream {upstream.name!r}")
                return upstream
        return self.default_upstream

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
        return PreparedRequest(method=req.method, url=upstream.url.rstrip("/") + req.path_qs,
                               headers=headers, body=body)

    async def _send_upstream(self, exchange: Exchange, upstream: Upstream) -> Answer:
        adapter = upstream.adapter
        if adapter is not None:
            prepared = adapter.prepare(exchange, upstream)
        else:
            prepared = self._prepare_native(exchange, upstream)
        try:
            answer = await self.send(prepared, adapter is None)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise MidwayError(504, f"upstream {upstream.name} timed out",
                              kind=ErrorKind.UPSTREAM_TIMEOUT) from None
        except (aiohttp.ClientConnectorError, UpstreamUnreachable):
            raise MidwayError(502, f"upstream {upstream.name} is unreachable",
                              kind=ErrorKind.UPSTREAM_UNREACHABLE) from None
        except aiohttp.ClientError as exc:
            raise MidwayError(502, f"upstream {upstream.name} failed: "
                              f"{type(exc).__name__}", kind=ErrorKind.UPSTREAM_FAILED) from None
        # Another vendor's answer is read through its adapter: the relay sees Anthropic's.
        return answer if adapter is None else TranslatedAnswer(answer, adapter, exchange)

    async def _send_http(self, prepared: PreparedRequest, lean: bool) -> Answer:
        fast = self.fast
        if lean and fast is not None and prepared.method != "HEAD":
            try:
                return await fast.request(prepared.method, prepared.url, prepared.headers,
                                          prepared.body)
            except UnsupportedURL:
                pass  # e.g. credentials in the URL: aiohttp's client handles those
        session = self.midway.session
        assert session is not None
        # encoded=True: the client's path and query go out byte for byte, not requoted.
        return ClientAnswer(await session.request(
            prepared.method, URL(prepared.url, encoded=True), data=prepared.body or None,
            headers=prepared.headers, allow_redirects=False, timeout=self.timeout))

    # -- relaying the answer -----------------------------------------------------------------

    async def _relay(self, request: web.Request, exchange: Exchange, answer: Answer
                     ) -> web.StreamResponse:
        exchange.status = answer.status
        headers = response_headers(answer.headers)
        headers["x-midway-request-id"] = exchange.id
        if exchange.answered_by is None:
            for name, value in exchange.extra_response_headers.items():
                headers[name] = value
        content_type = answer.headers.get("content-type", "")
        encoding = answer.headers.get("content-encoding")
        body = answer.body
        if body is None and SSE in content_type:
            return await self._relay_stream(request, exchange, answer, headers, encoding)
        length = answer.content_length
        if body is not None or ("json" in content_type and
                                (length is None or length <= BUFFER_LIMIT)):
            return await self._answer_body(request, exchange, answer.status, headers,
                                           body if body is not None else await answer.read(),
                                           encoding)
        return await self._relay_stream(request, exchange, answer, headers, encoding,
                                        sse=False)

    async def _answer_body(self, request: web.Request, exchange: Exchange, status: int,
                           headers: CIMultiDict[str], body: bytes,
                           encoding: str | None = None) -> web.StreamResponse:
        decoded = decode_body(body, encoding, BUFFER_LIMIT)
        if decoded is not None:
            exchange.response_body = decoded
            apply_message(exchange, decoded)
        response = web.Response(status=status, body=body, headers=headers)
        await self._send(request, exchange, response)
        return response

    async def _relay_stream(self, request: web.Request, exchange: Exchange, answer: Answer,
                            headers: CIMultiDict[str], encoding: str | None, sse: bool = True
                            ) -> web.StreamResponse:
        exchange.streaming = sse
        if sse and self.midway.stream_bytes_kept:
            exchange.kept_stream = KeptStream(self.midway.stream_bytes_kept)
        # Events are parsed only for the plugins that asked (observe_stream), and only from
        # plain bytes; every other stream is relayed as raw chunks.
        callers = self._chunk_callers(exchange) if sse and not encoding and \
            exchange.stream_observers else None
        source = answer.chunks()
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        timings = exchange.timings
        self.open_streams += 1
        metrics = self.midway.metrics
        if metrics is not None:
            metrics.open_streams += 1
        try:
            if callers:
                await self._relay_events(response, exchange, source, callers)
            else:
                observer = StreamObserver(exchange, encoding) if sse else None
                first = True
                async for chunk in source:
                    if observer is not None:
                        observer.feed(chunk)
                    await response.write(chunk)
                    if first:
                        timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
                        first = False
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, aiohttp.ServerTimeoutError) as exc:
            # The upstream failed after bytes went out: say so in-band; never splice or retry.
            timeout = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            exchange.error = "upstream idle timeout" if timeout else \
                f"upstream stream failed: {type(exc).__name__}"
            exchange.error_kind = ErrorKind.STREAM_TIMEOUT if timeout else ErrorKind.STREAM_BROKEN
            exchange.error_type = "api_error"
            if sse:
                await response.write(error_event(
                    "upstream stream timed out" if timeout else "upstream connection lost"))
            await _close(response)
            return response
        finally:
            self.open_streams -= 1
            if metrics is not None:
                metrics.open_streams -= 1
        if timings.ttfb_ms is None:
            timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
        await response.write_eof()
        return response

    def _chunk_callers(self, exchange: Exchange
                       ) -> list[tuple[Impl, Callable[[SSEEvent], Any]]]:
        observers = exchange.stream_observers
        return [(impl, _chunk_caller(impl, exchange)) for owner, impl in self.chunk_impls
                if any(owner is observer for observer in observers)]

    async def _relay_events(self, response: web.StreamResponse, exchange: Exchange,
                            source: AsyncIterator[bytes],
                            callers: list[tuple[Impl, Callable[[SSEEvent], Any]]]) -> None:
        parser = SSEParser()
        observer = StreamObserver(exchange)
        timings = exchange.timings
        plugins = self.plugins
        kept = exchange.kept_stream
        async for chunk in source:
            out = []
            for event in parser.feed(chunk):
                for impl, call in callers:
                    try:
                        result = call(event)
                        if result is not None:  # mostly None: keep the common path short
                            if impl.is_async or asyncio.iscoroutine(result):
                                result = await plugins.bounded(result)
                            if isinstance(result, SSEEvent):
                                event = result
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
                await response.write(joined)
                if timings.ttfb_ms is None:
                    timings.ttfb_ms = (time.monotonic() - timings.started) * 1000
        if parser.pending:  # a final event without its blank line: relay it as it came
            if kept is not None:
                kept.add(parser.pending)
            await response.write(parser.pending)


def _plugin_error(exchange: Exchange, exc: PluginFailed) -> MidwayError:
    exchange.fail(ErrorKind.PLUGIN_FAILED, f"plugin {exc.plugin} failed in {exc.hook}")
    return MidwayError(500, f"a midway plugin ({exc.plugin}) failed in {exc.hook}")


def _chunk_caller(impl: Impl, exchange: Exchange) -> Callable[[SSEEvent], Any]:
    """``on_chunk`` as a one-argument call (it runs for every event of every stream)."""
    fn, names = impl.function, impl.argnames
    if names == ("exchange", "event"):
        return functools.partial(fn, exchange)
    if names == ("event",):
        return fn
    return lambda event: fn(*[exchange if a == "exchange" else event for a in names])


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


async def _close(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass


def _record_metrics(metrics: Metrics, exchange: Exchange) -> None:
    upstream = exchange.upstream.name if exchange.upstream else "none"
    # The answer's model (already parsed for usage); the request's only if a plugin parsed it.
    model = exchange.response_model or (exchange.model if exchange.request.parsed else None) \
        or "none"
    model = model[:80]
    metrics.requests[(str(exchange.status), model, upstream, exchange.principal.id[:80])] += 1
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
