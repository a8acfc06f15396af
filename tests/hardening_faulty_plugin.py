"""Test-only plugin (``midway serve --plugin``) that raises or hangs in the hook a request
names in ``x-hardening-fault: raise:<hook>`` or ``hang:<hook>``."""

from __future__ import annotations

import asyncio
import sys

from midway import Exchange, hookimpl

HEADER = "x-hardening-fault"


async def _maybe_fail(exchange: Exchange, hook: str) -> None:
    mode, _, target = exchange.request.headers.get(HEADER, "").partition(":")
    if target != hook:
        return
    if mode == "raise":
        raise RuntimeError(f"hardening: {hook} raises on purpose")
    if mode == "hang":
        await asyncio.Event().wait()  # until the core's hook_timeout cuts it


@hookimpl
async def pre_request(exchange: Exchange) -> None:
    if exchange.request.headers.get(HEADER, "").endswith(":on_chunk"):
        exchange.observe_stream(sys.modules[__name__])  # on_chunk sees only these streams
    await _maybe_fail(exchange, "pre_request")


@hookimpl
async def choose_upstream(exchange: Exchange) -> None:
    await _maybe_fail(exchange, "choose_upstream")


@hookimpl
async def upstream_request(exchange: Exchange) -> None:
    await _maybe_fail(exchange, "upstream_request")


@hookimpl
async def upstream_response(exchange: Exchange) -> None:
    await _maybe_fail(exchange, "upstream_response")


@hookimpl
async def on_chunk(exchange: Exchange) -> None:
    await _maybe_fail(exchange, "on_chunk")


@hookimpl
async def post_response(exchange: Exchange) -> None:
    await _maybe_fail(exchange, "post_response")
