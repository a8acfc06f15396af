"""A plugin implementing every request hook and doing nothing: the cost of the hook machinery."""

from midway import hookimpl


@hookimpl
def pre_request(exchange):  # type: ignore[no-untyped-def]
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
