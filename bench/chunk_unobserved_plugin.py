"""A plugin with an ``on_chunk`` it opts into on no exchange: it must cost the relay nothing
(compare ``midway+chunk-unobserved`` with ``midway``)."""

from midway import hookimpl


@hookimpl
def on_chunk(exchange, event):  # type: ignore[no-untyped-def]
    raise AssertionError("on_chunk of an exchange nobody observes")
