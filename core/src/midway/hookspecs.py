"""The hook contract between midway's core and its plugins.

Every hook may be implemented as a plain function or as ``async def``: the core awaits what is
awaitable. Implementations may accept any subset of a hook's parameters, by name. Order follows
pluggy: ``@hookimpl(tryfirst=True)`` runs before plain implementations, ``trylast=True`` after;
otherwise the plugin registered last runs first. Hook wrappers are not supported.

Exactly what each hook may do when it raises is part of the contract:

* ``startup``, ``pre_request``, ``choose_upstream``, ``upstream_request`` and
  ``upstream_response``: an exception fails the request (or the start-up) with an
  Anthropic-format 500 ``api_error``.
* ``on_chunk``, ``post_response``, ``shutdown``: an exception is logged and counted
  (``midway_plugin_errors_total``) and the relay goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from midway.context import Midway
    from midway.exchange import Attempt, Exchange, Response, Retry, Upstream
    from midway.sse import SSEEvent

hookspec = pluggy.HookspecMarker("midway")
hookimpl = pluggy.HookimplMarker("midway")


@hookspec
def startup(midway: Midway) -> None:
    """Open pools, databases and background tasks before the first request is accepted.

    :param midway: the running instance: settings, this plugin's config table, the data dir,
        the shared HTTP session and the metrics registry.
    :return: nothing. Every implementation runs. Raising aborts start-up.
    """


@hookspec
def shutdown(midway: Midway) -> None:
    """Flush queues and close what ``startup`` opened, after the last open stream has ended.

    :param midway: the running instance.
    :return: nothing. Every implementation runs, even if one raises.
    """


@hookspec(firstresult=True)
def pre_request(exchange: Exchange) -> Response | None:
    """Inspect or modify a request before it goes anywhere, or answer it without an upstream.

    Fires once per request, after the body has been read and the client authenticated, before
    ``choose_upstream``. Change ``exchange.request.headers`` in place; to change the body assign
    ``exchange.request.json`` (or ``exchange.request.body``).

    :param exchange: the request in flight.
    :return: a :class:`midway.Response` to answer the client directly (a cache hit, a budget
        refusal) or ``None`` to go on. The first non-None result wins; later implementations do
        not run.
    """


@hookspec(firstresult=True)
def choose_upstream(exchange: Exchange) -> Upstream | None:
    """Decide where the request goes: base URL, credentials and adapter.

    Fires before every upstream attempt (again after ``upstream_response`` asked for a retry;
    ``exchange.attempts`` then holds the earlier attempts).

    :param exchange: the request in flight.
    :return: a :class:`midway.Upstream`, or ``None`` to leave the choice to the next plugin.
        The first non-None result wins; when none answers, the core uses the configured
        ``--upstream`` and passes the client's own credentials through.
    """


@hookspec
def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    """Observe an upstream attempt just before it is sent (write-ahead bookkeeping).

    :param exchange: the request in flight.
    :param attempt: this attempt: its number, id (``<exchange.id>.<n>``) and upstream.
    :return: nothing. Every implementation runs.
    """


@hookspec(firstresult=True)
def upstream_response(exchange: Exchange, attempt: Attempt) -> Retry | None:
    """Judge an attempt once the upstream's status and headers are known, or it failed to connect.

    Fires before any byte of that attempt reaches the client, so a retry is still possible.
    ``attempt.status`` and ``attempt.headers`` are set, or ``attempt.error`` says why there is
    no response.

    :param exchange: the request in flight.
    :param attempt: the attempt just answered.
    :return: a :class:`midway.Retry` to drop this answer and try again (``choose_upstream`` is
        asked anew after ``Retry.delay`` seconds), or ``None`` to relay it. The first non-None
        result wins.
    """


@hookspec
def on_chunk(exchange: Exchange, event: SSEEvent) -> SSEEvent | None:
    """Observe or replace one server-sent event of a streaming response the plugin observes.

    Opt-in per exchange: it fires only for exchanges on which the plugin called
    ``exchange.observe_stream(plugin)`` (``plugin``: the registered plugin object, ``self``
    for a plugin object, ``sys.modules[__name__]`` for a module of hook functions), usually in
    ``pre_request``; an implementation alone receives nothing. Then it fires for every complete
    SSE event, in order, parsed incrementally whatever the split of the byte stream, before the
    event is written to the client; the upstream is asked for an unencoded answer. A stream no
    plugin observes is relayed as raw chunks and pays nothing for this hook (a plugin that only
    needs the whole answer at ``post_response`` asks ``Midway.keep_stream_bodies`` instead).

    :param exchange: the request in flight.
    :param event: the event (``event.name``, ``event.data`` as text, ``event.json()``, and
        ``event.raw``: the exact bytes that will be written).
    :return: ``None`` to keep the event, or a new :class:`midway.SSEEvent` that replaces it for
        later implementations and the client (``SSEEvent.dropped()`` writes nothing). Every
        implementation runs.
    """


@hookspec
def post_response(exchange: Exchange) -> None:
    """Record the outcome: fires exactly once per request, after the last byte or the error.

    ``exchange`` then carries ``status``, ``usage`` (final, never summed), ``stop_reason``,
    ``timings`` (TTFB and total), ``principal``, ``upstream``, ``attempts``, ``answered_by``
    (the plugin that answered in ``pre_request``), ``error`` and ``client_disconnected``.

    :param exchange: the finished request.
    :return: nothing. Every implementation runs, even if one raises.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``midway`` command line.

    :param cli: the root click group; add commands or groups with ``cli.add_command``.
    :return: nothing.
    """


@hookspec
def register_routes(app: web.Application, midway: Midway) -> None:
    """Add HTTP routes to the server (dashboards, admin APIs) under ``/_midway/``.

    :param app: the aiohttp application; add routes with ``app.router.add_get`` and friends.
    :param midway: the running instance.
    :return: nothing.
    """


@hookspec
def register_metrics(midway: Midway) -> None:
    """Create this plugin's Prometheus metrics on ``midway.metrics.registry``.

    :param midway: the running instance.
    :return: nothing.
    """


@hookspec
def config_check(midway: Midway) -> list[str] | None:
    """Validate this plugin's config and connect to every store it names (``midway config check``).

    :param midway: an instance built from the config, not serving.
    :return: the problems found, each a sentence naming the store and what is wrong
        (unreachable, authentication failed, schema missing or old — "run midway db
        upgrade"); empty or ``None`` when all is well. Every implementation runs; an exception
        is reported as a problem of that plugin.
    """


@hookspec
def db_upgrade(midway: Midway) -> list[str] | None:
    """Create or migrate this plugin's schemas in its configured stores (``midway db upgrade``).

    :param midway: an instance built from the config, not serving.
    :return: what was done, one line per change (empty when already current). Every
        implementation runs; an exception fails the command.
    """


def hook_names() -> list[str]:
    """The hooks of the contract, in the order of this module."""
    return [name for name, obj in globals().items() if hasattr(obj, "midway_spec")]

