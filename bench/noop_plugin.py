"""A plugin implementing every request hook and doing nothing: the cost of the hook machinery.

It observes every stream (``on_chunk`` opt-in on every exchange), so each event is parsed and
handed to it; ``bench/chunk_unobserved_plugin.py`` is the same ``on_chunk`` never opted into.
"""

import sys

from midway import hookimpl


@hookimpl
def pre_request(exchange):  # type: ignore[no-untyped-def]
    exchange.observe_stream(sys.modules[__name__])
    return None


@hookimpl
def choose_upstream(exchange):  # type: ignore[no-untyped-def]
    return None


@hookimpl
def upstream_request(exchange, attempt):  # type: ignore[no-untyped-def]
    return None


@hookimpl
def upstream_response(exchange, attempt):  # type: ignore[no-untyped-def]
    return None


@hookimpl
def on_chunk(exchange, event):  # type: ignore[no-untyped-def]
    return None


@hookimpl
def post_response(exchange):  # type: ignore[no-untyped-def]
    return None
