"""aiohttp's request handler run inline in its connection's task, not in a task of its own.

On Python 3.11 aiohttp's server makes a task per request (``loop.create_task`` on
``RequestHandler._handle_request``) and awaits it from the connection's task: per request a
task (its registration in a weak set, a context copy), and the handler starts only at the event
loop's next iteration — a loop iteration, and a ``epoll_wait`` system call, more per request.
On 3.12 and later aiohttp starts that task eagerly (``eager_start=True``: the handler runs at
once, in the connection task's step); 3.11 has no eager tasks, so here the connection's task
awaits the handler's coroutine itself, which runs it at once as well. What differs from a task
of its own: the handler runs in the connection's task (``asyncio.current_task()``, which is
cancelled when the client goes away, as the request's task was through it) and context
(a context variable a handler sets without resetting it is seen by the next request on the
same connection).

How: a task factory on the loop the server runs in, which hands back ``_handle_request``'s
coroutine as it is (aiohttp only awaits what ``create_task`` returned there) and makes every
other task as the loop would.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any, cast

from aiohttp.web_protocol import RequestHandler

_HANDLE_REQUEST = RequestHandler._handle_request.__code__
# Only where aiohttp itself makes the per-request task with loop.create_task (before 3.12).
APPLIES = sys.version_info < (3, 12)


def _factory(loop: asyncio.AbstractEventLoop,
             coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
             context: Context | None = None) -> asyncio.Future[Any]:
    if type(coro) is types.CoroutineType and coro.cr_code is _HANDLE_REQUEST and \
            context is None:
        # Awaited by the connection's task right away (aiohttp's start()), as a task would be.
        return cast("asyncio.Future[Any]", coro)
    return asyncio.Task(coro, loop=loop, context=context)


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Run aiohttp's request handlers inline on ``loop`` (unless it has a task factory of its
    own, or this Python's aiohttp makes no task per request): whether it is now installed."""
    if not APPLIES:
        return False
    factory = loop.get_task_factory()
    if factory is None:
        loop.set_task_factory(_factory)
        return True
    return factory is _factory


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """Undo :func:`install` (another factory installed since is left alone)."""
    if loop.get_task_factory() is _factory:
        loop.set_task_factory(None)
