"""The hook contract between midway's core and its plugins.

This module is the contract. ``docs/hooks.md`` is generated from it, with
``python -m midway.hookdocs > docs/hooks.md``, and a test fails when the checked-in page
differs.

midway's core calls these hooks, in this order, for every request under ``/v1/`` (after
``authenticate``, when the gateway requires client credentials)::

    pre_request ─▶ choose_upstream ─▶ upstream_request ─▶ (send) ─▶ upstream_response ─┐
          │              ▲                                                            │ Retry
          │              └────────────────────────────────────────────────────────────┘
          │ a Response answers the request            on_chunk (each SSE event) ─▶ post_response

Around the process: ``register_commands`` when the ``midway`` command line is built;
``register_routes``, then ``register_metrics``, then ``startup``, then ``list_models``, then
``describe`` when a server starts; ``shutdown`` when it stops; ``check_ready`` on each
``GET /readyz``; ``config_check`` and ``db_upgrade`` in the commands of those names.

Implementing a hook
-------------------

Plugins implement hooks with ``@midway.hookimpl``. An implementation may be ``def`` or
``async def``: the core awaits what is awaitable, and "first non-None result wins" holds for
async implementations too (``register_commands`` and ``register_routes`` are the exceptions:
they must be plain functions). An implementation may accept any subset of the hook's
parameters, by name. Hook wrappers (``hookwrapper=True``, ``wrapper=True``) are not supported:
the core raises ``TypeError`` naming the plugin when it first looks the hook up (at start-up
for the request hooks).

An ``async`` implementation of a request hook, ``startup``, ``register_metrics`` or
``shutdown`` that takes longer than the ``hook_timeout`` setting (30 s by default) is cancelled
and counts as a failure of that implementation (see below), so a hung plugin cannot hold a
request or a shutdown forever.

Order
-----

Implementations of one hook run in pluggy's order: every ``@hookimpl(tryfirst=True)``, then the
plain ones, then every ``@hookimpl(trylast=True)``. Within each of these groups the plugin
registered last runs first. midway registers plugins in a fixed order:

0. the built-in plugins, always (``MIDWAY_PLUGINS`` does not filter them): ``keys`` (the key
   store, when ``[keys] enabled``) and then ``client_keys`` (``[[midway.client_keys]]``), so
   config-defined keys are looked up first;
1. installed plugins (the ``midway`` entry-point group), sorted by entry-point name;
2. ``--plugin`` files and modules (``extra_plugins``), in the order given;
3. plugin objects passed by embedding code and tests (``midway_factory(plugins=[...])``), in
   the order given.

So a ``--plugin`` file runs before every installed plugin of its group, and among installed
plugins of one group the name sorting last runs first (``router`` before ``cache`` before
``audit``). The order never depends on ``sys.path`` or on the file system. A plugin that needs
to run before or after another says so with ``tryfirst``/``trylast`` rather than by its name:
the cache's ``pre_request`` is ``tryfirst`` so that a hit is never reserved or refused by
billing's (``trylast``); billing's ``post_response`` is ``tryfirst`` so that audit's and the
dashboard's (``trylast``) see ``annotations["cost_usd"]``.

When an implementation raises
-----------------------------

What happens is part of the contract, and each hook below states it:

* ``startup``, ``register_metrics``: start-up is aborted.
* ``pre_request``, ``choose_upstream``, ``upstream_request``, ``upstream_response``: the request
  fails with an Anthropic-format 500 ``api_error`` naming the plugin and the hook
  (``exchange.error_kind`` is ``ErrorKind.PLUGIN_FAILED``); later implementations do not run.
* ``on_chunk``, ``post_response``, ``shutdown``, ``register_commands``, ``register_routes``,
  ``describe``: the failure is logged and the relay (or the command line, or the server) goes
  on with the next implementation.
* ``config_check``: the exception is reported as a problem of that plugin.
* ``check_ready``: the instance reports itself not ready, with the exception's message.
* ``db_upgrade``: the command fails.

Every failure a relay survives or that fails a request is counted in
``midway_plugin_errors_total{plugin, hook}``.

Raising ``midway.MidwayError(status, message, headers=...)`` on purpose from ``pre_request``,
``choose_upstream``, ``upstream_request`` or ``upstream_response`` is not a failure: the client
gets that Anthropic-format error instead (e.g. a 429 with ``retry-after``), and
``exchange.error_kind`` is ``ErrorKind.REFUSED``.

Shared conventions
------------------

* Plugins publish findings for each other in ``exchange.annotations``. A key that more than one
  package reads or writes is a constant of :mod:`midway.annotations` (``COST_USD``, ``CACHE``,
  ``ROUTE``, …); values are plain JSON-able data.
* A plugin keeps private per-request state in ``exchange.state["<plugin>"]``. The core never
  writes there: what it knows about the exchange is in the ``Exchange``'s own fields.
* Why an exchange did not complete normally is ``exchange.error`` (text, for people) and
  ``exchange.error_kind`` (a :class:`midway.ErrorKind`, to match on); the same pair is on each
  ``Attempt``. Match on the kind, never on the text.
* A plugin offering queries to others publishes an object in ``midway.services["<name>"]`` in
  ``startup`` (or ``register_routes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from midway.context import Midway
    from midway.exchange import Attempt, Exchange, Principal, Response, Retry, Upstream
    from midway.sse import SSEEvent

hookspec = pluggy.HookspecMarker("midway")
hookimpl = pluggy.HookimplMarker("midway")


@hookspec
def startup(midway: Midway) -> None:
    """Open pools, databases and background tasks before the first request is accepted.

    Fires once per process, after ``register_routes`` and ``register_metrics``, before the
    server accepts its first connection.

    :param midway: the running instance (:class:`midway.Midway`): ``settings``,
        ``config(name)`` (this plugin's TOML table, overridable by ``MIDWAY_<NAME>__<KEY>``),
        ``data_dir``, ``session`` (the shared aiohttp client session), ``metrics.registry``,
        ``services``, and ``keep_stream_bodies(limit)``.
    :return: nothing. Every implementation runs, in order.

    Raising (or exceeding ``hook_timeout``) aborts start-up. A store opened with
    :func:`midway.storage.open_database` (or pinged with :func:`midway.storage.ping_redis`, or
    first reached through :func:`midway.storage.reach`) is waited for up to the
    ``store_wait`` setting while it cannot be reached, then stops start-up with one line
    naming it (:class:`midway.storage.StoreUnavailable`, a ``ConfigError``): no traceback.
    """


@hookspec
def check_ready(midway: Midway) -> list[str] | None:
    """Say what keeps this plugin from serving traffic: a store that does not answer, a
    background process that is down. ``/readyz`` asks it of every plugin.

    Fires on each ``GET /readyz`` (a load balancer's or Kubernetes' readiness probe, every few
    seconds), after ``startup`` and before ``shutdown``. Implementations run concurrently, each
    bounded by the ``ready_timeout`` setting (2 s); one that takes longer counts as "not ready:
    <plugin> did not answer". Keep it cheap: one trivial query per store
    (:meth:`midway.storage.Database.ping`).

    :param midway: the running instance.
    :return: what is not ready, one line each, no credentials (``[]`` or ``None``: ready).
        Every implementation runs.

    Raising counts as not ready, with the exception's message.
    """


@hookspec
def shutdown(midway: Midway) -> None:
    """Flush queues and close what ``startup`` opened.

    Fires once per process on SIGTERM/SIGINT, after the server stopped accepting connections,
    the open requests finished (or were cut at the drain's deadline) and the ``post_response``
    calls in flight ended. The whole drain has one budget, ``shutdown_timeout``: this hook gets
    what is left of it (at least half a second) and is cancelled at its end, so flush first.

    :param midway: the running instance.
    :return: nothing. Every implementation runs, even if one raises.

    Raising is logged and counted; the next implementation runs.
    """


@hookspec(firstresult=True)
def authenticate(exchange: Exchange, credential: str | None) -> Principal | None:
    """Say who presents ``credential``: the identity provider's hook.

    Fires once per request under ``/v1/``, before ``pre_request``, only when the gateway
    requires client credentials (``[[midway.client_keys]]`` or ``[keys] enabled``); without
    them every client passes its own upstream key through and is named by it. First result:
    the first non-None result wins. The built-in ``client_keys`` and ``keys`` plugins
    implement it; an identity provider (OIDC tokens, mTLS, a corporate directory) plugs in
    the same way.

    :param exchange: the request in flight; its body is not read yet.
    :param credential: what the client presented (``x-api-key``, or the token of
        ``Authorization: Bearer``), or ``None``. After this hook the core removes both headers:
        a client's midway credential never leaves the gateway.
    :return: a :class:`midway.Principal` (``exchange.principal`` becomes it; its ``models``,
        ``upstreams`` and labels scope the request), or ``None`` if this implementation does
        not know the credential. When every implementation returns ``None`` the client gets
        a 401 ``authentication_error``.

    Raising fails the request with a 500 ``api_error`` naming the plugin; raising
    ``midway.MidwayError`` answers with that error instead (e.g. a 503 when the identity
    provider is unreachable).
    """


@hookspec(firstresult=True)
def pre_request(exchange: Exchange) -> Response | None:
    """Inspect or modify a request before it goes anywhere, or answer it without an upstream.

    Fires once per request under ``/v1/``, after the body was read and the client
    authenticated, before any upstream is chosen. First result: the first non-None result
    wins and later implementations do not run. A Bedrock- or Vertex-format request arrives
    already rewritten as the Messages request it stands for (``exchange.client_format`` says
    which format the client spoke, ``exchange.client_path`` its path; see
    docs/client-formats.md), so one implementation serves every format.

    :param exchange: the request in flight (:class:`midway.Exchange`). Change
        ``exchange.request.headers`` in place; to change the body assign
        ``exchange.request.json = {...}`` (or ``exchange.request.body = b"..."``). Reading
        never re-encodes: an untouched body is forwarded byte for byte.
    :return: a :class:`midway.Response` to answer the client directly (a cache hit, a budget
        refusal) — ``Response(status, body=bytes | JSON-able, headers=..., stream=async
        iterator of bytes)`` — or ``None`` to go on. ``exchange.answered_by`` then names the
        plugin that answered, and the answer still goes through ``on_chunk`` (when streamed)
        and ``post_response``.

    Raising fails the request with a 500 ``api_error`` naming the plugin; raising
    ``midway.MidwayError`` answers with that error instead.
    """


@hookspec(firstresult=True)
def choose_upstream(exchange: Exchange) -> Upstream | None:
    """Decide where the request goes: base URL, credentials and adapter.

    Fires before every upstream attempt: once normally, again after ``upstream_response``
    asked for a retry (``exchange.attempts`` then lists the earlier attempts). First result:
    the first non-None result wins and later implementations do not run.

    :param exchange: the request in flight.
    :return: a :class:`midway.Upstream` ``(url, name, headers, passthrough_auth, adapter,
        key_id, model)``, or ``None`` to leave the choice to the next plugin. When none
        answers, the core uses ``--upstream`` and passes the client's own credentials through
        (or the configured ``upstream_api_key`` when clients present midway keys).
        ``headers`` are set on the upstream request (credentials go here);
        ``passthrough_auth=False`` removes the client's ``x-api-key``/``authorization``
        first; ``adapter`` translates for non-Anthropic vendors; ``model`` rewrites the body's
        model for this attempt. An upstream whose ``name`` the client's key may not use is
        answered with a 403; anything but an ``Upstream`` or ``None`` with a 500.

    Raising fails the request with a 500 ``api_error`` naming the plugin; raising
    ``midway.MidwayError`` answers with that error instead.
    """


@hookspec
def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    """Observe an upstream attempt just before it is sent (write-ahead bookkeeping).

    Fires once per attempt, after ``choose_upstream``, right before the request goes out: for a
    pending ledger row or an in-flight counter.

    :param exchange: the request in flight.
    :param attempt: this attempt (:class:`midway.Attempt`): ``number`` (1-based), ``id``
        (``<exchange.id>.<number>``, midway's own, never the provider's), ``upstream``,
        ``started``.
    :return: nothing. Every implementation runs, in order.

    Raising fails the request with a 500 ``api_error`` naming the plugin, before anything is
    sent upstream; raising ``midway.MidwayError`` answers with that error instead.
    """


@hookspec(firstresult=True)
def upstream_response(exchange: Exchange, attempt: Attempt) -> Retry | None:
    """Judge an attempt once the upstream's status and headers are known, or it failed.

    Fires once per attempt, always before any byte of it reaches the client, so a retry is
    still possible. Not called for the last allowed attempt (``max_attempts``): a plugin judges
    that one in ``post_response``. First result: the first non-None result wins and later
    implementations do not run.

    :param exchange: the request in flight.
    :param attempt: the attempt just answered: ``status``, ``headers`` (with
        ``anthropic-ratelimit-*``, ``retry-after``) and ``request_id``; or, when there is no
        response, ``error`` and ``error_kind`` (``UPSTREAM_UNREACHABLE``,
        ``UPSTREAM_TIMEOUT``, ``UPSTREAM_FAILED``). For a non-streaming error answer
        ``attempt.body`` holds the error body (at most 1 MiB), relayed unmodified if the answer
        is kept.
    :return: a :class:`midway.Retry` ``(delay, reason)`` to drop this answer and try again
        after ``delay`` seconds (``choose_upstream`` is asked anew), or ``None`` to relay it.

    Raising fails the request with a 500 ``api_error`` naming the plugin; raising
    ``midway.MidwayError`` answers with that error instead.
    """


@hookspec
def on_chunk(exchange: Exchange, event: SSEEvent) -> SSEEvent | None:
    """Observe or replace one server-sent event of a streaming response the plugin observes.

    Fires only for exchanges on which the plugin opted in by calling
    ``exchange.observe_stream(plugin)`` (``plugin``: the registered plugin object, ``self``
    for a plugin object, ``sys.modules[__name__]`` for a module of hook functions), usually in
    ``pre_request``; an implementation alone receives nothing. Then it fires for every complete
    SSE event, in order, parsed incrementally whatever the split of the byte stream, before the
    event is written to the client; the upstream is asked for an unencoded answer. A stream no
    plugin observes is relayed as raw chunks and pays nothing for this hook (a plugin that only
    needs the whole answer at ``post_response`` asks ``Midway.keep_stream_bodies`` instead).

    A plugin that needs only the usage and the amount of text (a meter) opts in with
    ``exchange.observe_stream(plugin, usage_only=True)``: its implementation then fires for
    ``message_start``, ``message_delta``, ``message_stop`` and ``error`` events, and for a
    ``content_block_delta`` only once ``exchange.streamed_text`` — the characters of text,
    thinking and tool input (``partial_json``) of the stream's ``content_block_delta``
    events read so far, this one included — passes ``exchange.streamed_text_mark``, which
    the plugin sets (``None``, the default: never). The content events no implementation is
    shown are relayed as they came, unparsed; the text is counted whatever the order of
    implementations, as read from the upstream.

    :param exchange: the request in flight.
    :param event: a :class:`midway.SSEEvent`: ``name``, ``data`` (text), ``json()``, and
        ``raw`` (the exact bytes that will be written).
    :return: ``None`` to keep the event, or a new ``SSEEvent`` (``SSEEvent.build(name,
        data)``) that replaces it for later implementations and the client;
        ``SSEEvent.dropped()`` writes nothing. Every implementation runs, in order.

    An implementation may be ``async``, or return an awaitable only when it has something to
    wait for (the relay awaits it, within ``hook_timeout``, before the event goes on). The
    response head goes out with the first bytes relayed after the first upstream read's
    events have passed the implementations (at once, alone, when that read completes no
    event), so an awaitable there delays the head as much as that first event.

    Raising :class:`midway.MidwayError` (also from that awaitable) ends the stream on purpose:
    the events before this one stay relayed, this one is not, and the client's stream ends
    with ``event: error`` carrying the error's type and message (``exchange.error_kind`` its
    ``kind``, ``exchange.error_type`` its type); no later implementation sees the event.
    Raising anything else is logged and counted; the event goes on as it was before that
    implementation.
    """


@hookspec
def post_response(exchange: Exchange) -> None:
    """Record the outcome of a request.

    Fires exactly once per request — after the last byte was written, or after the error, or
    when the client went away. An ``async`` implementation runs in a task of its own, so the
    client's disconnect does not cancel it; ``shutdown`` waits for it.

    :param exchange: the finished request: ``status`` (499 when the client disconnected
        before an answer), ``usage`` (final: the last ``message_delta`` value of each field,
        else ``message_start``'s — never a sum — or the JSON body's), ``stop_reason``,
        ``complete`` (the answer reached its end: a stream's ``message_stop`` or a complete
        JSON message), ``timings`` (``ttfb_ms``, ``total_ms``, ``upstream_ttfb_ms``),
        ``principal``, ``upstream``, ``attempts``, ``answered_by``, ``error`` and
        ``error_kind``, ``error_type``, ``client_disconnected``, ``upstream_cut_short`` (the
        upstream ended its answer early; the client's response was ended as broken, or with
        an ``event: error``), ``upstream_request_id``, ``response_id`` (the answer's
        message ``id``, ``msg_…``), ``response_body`` (decoded, for JSON answers and a
        batch's JSONL results file, as the client got it: a batch object's ``results_url``
        is already midway's path; for one over the relay's 32 MiB buffer limit only its
        start, up to the ``keep_stream_bodies`` limit, with ``response_body_truncated`` set),
        ``streaming``, and
        ``stream_body``/``stream_truncated``: a streamed answer's bytes as the client received
        them (decoded), kept only when a plugin called ``midway.keep_stream_bodies(limit)`` in
        ``startup`` (the largest limit wins). For a plugin that needs the whole answer at the
        end that is far cheaper than ``on_chunk``: nothing is parsed for it, each chunk is
        kept by reference. The request's parsed JSON was let go when its answer began (it
        could outweigh the body several times for as long as a stream lasts): read a
        top-level value with ``exchange.request.field(name)`` (``exchange.model`` does);
        ``exchange.request.json`` parses the body again.
    :return: nothing. Every implementation runs, even if one raises.

    Raising is logged and counted; the next implementation runs.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``midway`` command line.

    Fires once when the command line is built, before any command runs. Must be a plain
    function (it is not awaited).

    :param cli: the root ``click.Group``; add commands or groups with ``cli.add_command``.
        Commands that read a store should use ``midway.cli.settings_options`` to honour
        ``--config``, ``--data-dir`` and ``MIDWAY_DATA_DIR``.
    :return: nothing. Every implementation runs, in order.

    Raising is logged and counted; the command line goes on without what that implementation
    did not add.
    """


@hookspec
def register_routes(app: web.Application, midway: Midway) -> None:
    """Add HTTP routes to the server (dashboards, admin APIs) under ``/_midway/``.

    Fires once while the server's aiohttp application is built, before ``/v1/*`` is routed
    and before ``register_metrics`` and ``startup``. Must be a plain function (it is not
    awaited). A plugin's route under ``/v1`` is served before the relay's; while no plugin
    adds one (nor a middleware, a sub-application or an ``on_response_prepare`` signal),
    requests under ``/v1/`` reach the relay without aiohttp's router (a few microseconds a
    request).

    :param app: the ``aiohttp.web.Application``; add routes with ``app.router.add_get`` and
        friends.
    :param midway: the running instance, not started yet: use it from the handlers.
    :return: nothing. Every implementation runs, in order.

    Raising is logged and counted; the server starts without what that implementation did
    not add.
    """


@hookspec
def register_metrics(midway: Midway) -> None:
    """Create this plugin's Prometheus metrics on ``midway.metrics.registry``.

    Fires once per process at start-up, before ``startup``. ``/metrics`` exposes them with
    the core's.

    :param midway: the running instance.
    :return: nothing. Every implementation runs, in order.

    Raising (or exceeding ``hook_timeout``) aborts start-up.
    """


@hookspec
def list_models(midway: Midway) -> list[dict[str, str]] | None:
    """Name the models this plugin serves, for ``GET /v1/models`` (model discovery).

    Fires once per server at start-up, after ``startup``, when midway builds the list it
    answers ``/v1/models`` with (``[models]`` in the configuration: docs/configuration.md).
    Each entry is a table ``{"id", "display_name", "description", "created_at"}`` (only
    ``id`` required); an entry of the ``[[models.list]]`` table with the same ``id`` wins.
    The router names the models its rules route by exact name.

    :param midway: the running instance (``options(name, cls)``, ``services``).
    :return: the entries, or ``None``. Every implementation runs, in order.

    Raising, or an entry that is not a valid model, is logged and counted; that plugin's
    entries are left out.
    """


@hookspec
def describe(midway: Midway) -> str | None:
    """Say in one short line what this plugin does, as it is configured now.

    Fires once per server, after ``startup``, when midway announces itself: each line is
    logged under the "listening on" line, prefixed with the plugin's name. Derive the line from
    the settings in force, not from what the defaults used to be (``cache: off until a rule or
    the request asks for it``; ``audit: bodies kept 30 days``; ``dashboard:
    http://127.0.0.1:8910/_midway/dashboard``).

    :param midway: the running instance (``settings``, ``options(name, cls)``, ``services``).
    :return: the line, or ``None`` to say nothing. Every implementation runs, in order of the
        plugins' names.

    Raising is logged and counted; the next implementation runs.
    """


@hookspec
def config_check(midway: Midway) -> list[str] | None:
    """Validate this plugin's config and connect to every store it names.

    Fires once in ``midway config check``, on an instance built from the config that serves
    nothing (no ``startup`` ran).

    :param midway: the instance (``settings``, ``config(name)``, ``data_dir``).
    :return: the problems found, each a sentence naming the store and what is wrong
        (unreachable, authentication failed, schema missing or old: "run
        ``midway db upgrade``"); an empty list or ``None`` when all is well. Every
        implementation runs, in order.

    Raising is reported as a problem of that plugin; the next implementation runs.
    """


@hookspec
def db_upgrade(midway: Midway) -> list[str] | None:
    """Create or migrate this plugin's schemas in the stores it is configured with.

    Fires once in ``midway db upgrade``, on an instance built from the config that serves
    nothing, for embedded SQLite files and shared PostgreSQL alike. Plugins also do this in
    ``startup``; the command exists for operators who migrate ahead of a rollout.

    :param midway: the instance.
    :return: what was done, one line per change (empty when already current). Every
        implementation runs, in order, even if one raises.

    Raising fails the command, naming the first plugin that raised.
    """


def hook_names() -> list[str]:
    """The hooks of the contract, in the order of this module."""
    return [name for name, obj in globals().items() if hasattr(obj, "midway_spec")]
