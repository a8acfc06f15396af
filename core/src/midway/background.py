"""Periodic background work (metrics publishers, reconcilers, pollers, sweeps) that outlives
the errors it meets: a full disk, a database or Redis that is away, a bug in one round.

Each round that fails is counted in an :class:`~midway.storage.Episode`: the log gets one line
when a run of failures starts (with its cause: ``disk full``, ``connection refused``…) and one
when the work succeeds again, never one per round, and the next round comes on time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from midway.storage.retry import Episode

Work = Callable[[], Awaitable[object] | object]


async def every(interval: float, work: Work, *, name: str, log: logging.Logger,
                first: float | None = None) -> None:
    """Run ``work`` (plain or ``async``) every ``interval`` seconds until cancelled.

    :param name: what the work is, for the log (``"metrics: publishing"``).
    :param first: seconds before the first round (``interval`` by default).
    """
    episode = Episode(log, name)
    await asyncio.sleep(interval if first is None else first)
    while True:
        try:
            result = work()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # any failure: log the episode, keep going
            episode.failed(exc, f"trying again every {interval:g} s")
        else:
            episode.ok()
        await asyncio.sleep(interval)


def start_every(interval: float, work: Work, *, name: str, log: logging.Logger,
                first: float | None = None) -> asyncio.Task[None]:
    """:func:`every` in a task of its own (named ``name``); cancel it to stop."""
    return asyncio.get_running_loop().create_task(
        every(interval, work, name=name, log=log, first=first), name=name)
