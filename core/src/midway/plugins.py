"""Finding, loading and calling plugins.

pluggy does not await: a first-result hook with an ``async def`` implementation would return a
coroutine as its "result". So the core walks pluggy's ordered implementations itself, awaits
what is awaitable, and stops at the first non-None result where the hook says so.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import stat
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import attrs
import pluggy

from midway import hookspecs
from midway.config import ConfigError
from midway.errors import MidwayError
from midway.secrets_ref import SecretError
from midway.sharedtimer import SharedTimer
from midway.storage.retry import describe, is_transient

log = logging.getLogger("midway.plugins")
# Transient failures of one plugin's hook this close together are one outage: logged once.
OUTAGE_GAP = 30.0

ENTRY_POINT_GROUP = "midway"


@attrs.define
class PluginInfo:
    """What ``midway plugins`` reports about one plugin."""

    name: str
    version: str | None
    source: str  # "entry point <dist>", "file <path>", "module <name>", "object"
    hooks: list[str] = attrs.field(factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                "hooks": self.hooks, "error": self.error}


@attrs.define(frozen=True)
class Impl:
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    is_async: bool


def import_risk(path: Path) -> str | None:
    """Why code at ``path`` may have been written by someone other than root: the file, or a
    directory above it, owned by another user or writable by one (group or world, a sticky
    directory excepted). ``None``: only root could have put it there."""
    path = Path(os.path.abspath(path))
    for part in (path, *path.parents):
        try:
            info = part.stat()
        except OSError as exc:
            return f"{part} cannot be checked ({exc.strerror})"
        directory = stat.S_ISDIR(info.st_mode)
        writable = info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and
                                                   info.st_gid != 0)
        if info.st_uid != 0:
            return f"{part} is owned by uid {info.st_uid}"
        if writable and not (directory and info.st_mode & stat.S_ISVTX):
            return f"{part} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def refuse_writable_by_others(path: Path) -> None:
    """Raise ``PermissionError`` when running as root and ``path`` fails :func:`import_risk`:
    importing it would run, as root, code a non-root user could have written (e.g. a plugin
    named in a config file handed to ``midway config check``)."""
    if getattr(os, "geteuid", lambda: -1)() != 0:
        return
    risk = import_risk(path)
    if risk is not None:
        raise PermissionError(f"refusing to import {path} as root: {risk}; make it and its "
                              "directories root-owned and not writable by others")


class PluginHost:
    """The plugin manager of one midway instance (or one CLI invocation)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("midway")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.errors: Counter[tuple[str, str]] = Counter()
        self._outages: dict[tuple[str, str], float] = {}  # last transient failure (monotonic)
        self.on_failure: list[Callable[[str, str], None]] = []
        self._impls: dict[str, list[Impl]] = {}
        # An async implementation that takes longer than this is cancelled and counted as a
        # failure, so a hung plugin cannot hold a request (or shutdown) forever.
        self.hook_timeout: float | None = None
        # The implementations waiting under it, and the one timer that cuts them (bounded)
        self._waits: SharedTimer[_Wait] = SharedTimer(_Wait.check)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop they wait in

    # -- loading -----------------------------------------------------------------------------

    def load(self, only: list[str] | None = None, extra: Iterable[str] = (),
             objects: Iterable[tuple[str, object]] = ()) -> None:
        """Register installed plugins (all, or ``only`` those named) sorted by entry-point
        name, then ``extra`` files/modules and then ``objects``, each in the order given.

        This registration order is part of the hook contract (see :mod:`midway.hookspecs`):
        among implementations of equal priority the one registered last runs first. The
        built-in plugins (:mod:`midway.builtins`) come before all of them, always.
        """
        from midway import __version__
        from midway.builtins import builtin_plugins

        for name, obj in builtin_plugins():
            self._register(name, obj, __version__, "built-in")
        for ep in _entry_points():
            if only is not None and ep.name not in only:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else None
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin is reported, never fatal
                self._failed(ep.name, version, f"entry point {dist}", exc)
                continue
            self._register(ep.name, obj, version, f"entry point {dist}")
        for spec in extra:
            self.load_extra(spec)
        for name, obj in objects:
            self._register(name, obj, getattr(obj, "__version__", None), "object")

    def load_extra(self, spec: str) -> None:
        """``path/to/plugin.py`` or ``package.module``. Running as root, code that a non-root
        user could have written (:func:`import_risk`) is refused, not imported."""
        path = Path(spec)
        if spec.endswith(".py") or path.is_file():
            name = path.stem
            source = f"file {path}"
            try:
                refuse_writable_by_others(path)
                module_spec = importlib.util.spec_from_file_location(f"midway_local_{name}", path)
                if module_spec is None or module_spec.loader is None:
                    raise ImportError(f"cannot import {path}")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
            except Exception as exc:
                self._failed(name, None, source, exc)
                return
        else:
            name = spec.rsplit(".", 1)[-1]
            source = f"module {spec}"
            try:
                found = importlib.util.find_spec(spec.split(".", 1)[0])
                if found is not None and found.origin and os.path.isabs(found.origin):
                    refuse_writable_by_others(Path(found.origin))
                module = importlib.import_module(spec)
            except Exception as exc:
                self._failed(name, None, source, exc)
                return
        self._register(name, module, getattr(module, "__version__", None), source)

    def register(self, name: str, obj: object) -> None:
        """Register an already-built plugin object (used by tests and embedding code)."""
        self._register(name, obj, getattr(obj, "__version__", None), "object")

    def _register(self, name: str, obj: object, version: str | None, source: str) -> None:
        if self.pm.has_plugin(name):
            name = f"{name}#{len(self.infos)}"
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            self._failed(name, version, source, exc)
            return
        hooks = sorted(caller.name for caller in self.pm.get_hookcallers(obj) or ())
        self.infos.append(PluginInfo(name=name, version=version, source=source, hooks=hooks))
        self._impls.clear()

    def _failed(self, name: str, version: str | None, source: str, exc: BaseException) -> None:
        message = (f"cannot import {exc.name!r}" if isinstance(exc, ImportError) and exc.name
                   else str(exc) or type(exc).__name__)
        if source.startswith("entry point"):  # left out; a --plugin fails start-up instead
            log.error("plugin %s (%s) failed to load: %s", name, source, message)
        self.infos.append(PluginInfo(name=name, version=version, source=source, error=message))

    # -- calling -----------------------------------------------------------------------------

    def impls(self, hook: str) -> list[Impl]:
        """Implementations of ``hook`` in the order pluggy would call them."""
        cached = self._impls.get(hook)
        if cached is None:
            caller = getattr(self.pm.hook, hook)
            cached = []
            for impl in reversed(caller.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    raise TypeError(f"{impl.plugin_name}: hook wrappers are not supported")
                fn = impl.function
                cached.append(Impl(impl.plugin_name, fn, tuple(impl.argnames),
                                   inspect.iscoroutinefunction(fn)))
            self._impls[hook] = cached
        return cached

    def has(self, hook: str) -> bool:
        return bool(self.impls(hook))

    async def first(self, hook: str, **kwargs: Any) -> tuple[Any, str | None]:
        """Call until one implementation returns non-None: ``(result, plugin name)``.

        A :class:`MidwayError` raised on purpose propagates as is (it becomes the answer); any
        other exception is counted and re-raised as :class:`PluginFailed`.
        """
        for impl in self.impls(hook):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if impl.is_async or (result is not None and inspect.isawaitable(result)):
                    result = await self.bounded(result)
            except MidwayError:
                raise
            except Exception as exc:
                self.failed(impl.plugin, hook)
                raise PluginFailed(impl.plugin, hook) from exc
            if result is not None:
                return result, impl.plugin
        return None, None

    async def each(self, hook: str, *, swallow: bool, **kwargs: Any) -> None:
        """Call every implementation; with ``swallow`` a failure is logged, counted, skipped.

        Without ``swallow``, a :class:`MidwayError` or :class:`~midway.config.ConfigError`
        propagates as is; any other exception is counted and re-raised as
        :class:`PluginFailed`."""
        for impl in self.impls(hook):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if impl.is_async or (result is not None and inspect.isawaitable(result)):
                    await self.bounded(result)
            except SecretError as exc:
                # A credential reference of the plugin's table that does not resolve: as a bad
                # table, it stops start-up with one line (the message names the variable/file).
                if not swallow:
                    raise ConfigError(f"[{impl.plugin}] {exc}; set it, or change the "
                                      f"reference in [{impl.plugin}]") from None
                self.failed(impl.plugin, hook)
            except (MidwayError, ConfigError):
                # A bad config table stops start-up with its own one-line message.
                if not swallow:
                    raise
                self.failed(impl.plugin, hook)
            except Exception as exc:
                self.failed(impl.plugin, hook)
                if not swallow:
                    raise PluginFailed(impl.plugin, hook) from exc

    async def bounded(self, awaitable: Any) -> Any:
        """Await a hook's result within ``hook_timeout``.

        Most async implementations finish without ever waiting (a dict update, a queue put):
        a coroutine is run up to its first wait before any deadline is set, so those cost
        none; one that waits runs on under a deadline counted from its call, in this task,
        cut as ``asyncio.timeout`` cuts (a ``TimeoutError`` where the task was cancelled for
        it). The waits share one timer (:class:`midway.sharedtimer.SharedTimer`), armed at
        the earliest deadline and left armed when that wait ends early: a timer set and
        cancelled per wait cost ~10 k instructions and three ``getpid()`` calls, twice a
        request with billing on.
        """
        timeout = self.hook_timeout
        if timeout is None:
            return await awaitable
        if type(awaitable) is not types.CoroutineType:
            async with asyncio.timeout(timeout):
                return await awaitable
        loop = self._loop
        task = asyncio.current_task(loop) if loop is not None else None
        if loop is None or task is None:  # the first wait, or in another loop (tests)
            loop = self._loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            assert task is not None
            self._waits = SharedTimer(_Wait.check)  # the other loop's are gone with it
        deadline = loop.time() + timeout
        try:
            first = awaitable.send(None)
        except StopIteration as done:
            return done.value
        wait = _Wait(task, deadline)
        self._waits.watch(wait, deadline, loop)
        try:
            result = await _Resumed(awaitable, first)
        except asyncio.CancelledError as exc:
            if wait.expired and task.uncancel() <= wait.cancelling:
                raise TimeoutError from exc  # (else cancelled by someone else too: theirs)
            raise
        finally:
            self._waits.discard(wait)
        if wait.expired:  # cut, but it returned all the same: the cancellation is taken back
            task.uncancel()
        return result

    def call_sync(self, hook: str, **kwargs: Any) -> None:
        """Call a hook whose implementations are plain functions (CLI registration)."""
        for impl in self.impls(hook):
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception:
                self.failed(impl.plugin, hook)

    def failed(self, plugin: str, hook: str) -> None:
        """Log and count a plugin failure that the relay survives (called in ``except``).
        Failures of a store that is away (a database restarting, a full disk) are logged once
        per episode, not once per request: an outage under load would flood the log."""
        key = (plugin, hook)
        self.errors[key] += 1
        exc = sys.exc_info()[1]
        if exc is not None and is_transient(exc):
            now = time.monotonic()
            last = self._outages.get(key)
            self._outages[key] = now
            if last is None or now - last > OUTAGE_GAP:
                log.warning("plugin %s failed in %s (%s); more failures like it are counted "
                            "(midway_plugin_errors_total), not logged, until none for %.0f s",
                            plugin, hook, describe(exc), OUTAGE_GAP)
        else:
            log.exception("plugin %s failed in %s", plugin, hook)
        for callback in self.on_failure:
            callback(plugin, hook)


class _Wait:
    """A hook implementation waiting under ``hook_timeout`` (:meth:`PluginHost.bounded`):
    its task, its deadline (event loop time), how many cancellations the task had pending
    when it began, and whether its deadline cancelled the task."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False

    def check(self, now: float) -> float | None:
        """The shared timer's check: past its deadline, the task is cancelled (once) and the
        wait forgotten by the timer; else its deadline."""
        if now < self.deadline:
            return self.deadline
        if not self.expired:
            self.expired = True
            self.task.cancel()
        return None


class _Resumed:
    """The rest of a coroutine already run up to its first wait (``first``: what it yielded
    there), awaitable as the coroutine itself would be: what the task sends or throws goes
    on to it (``yield from`` by hand)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: types.CoroutineType[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, the timeout's included
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


class PluginFailed(Exception):
    """A plugin raised in a hook whose failure fails the request."""

    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(f"plugin {plugin} failed in {hook}")
        self.plugin = plugin
        self.hook = hook


def installed_plugin_names() -> list[str]:
    """The names ``MIDWAY_PLUGINS`` and ``[midway] plugins`` may use, sorted."""
    return [ep.name for ep in _entry_points()]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed plugins, sorted by name: importlib's order depends on sys.path and on
    the file system, and the call order of hooks must not."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the same distribution on sys.path twice: first wins
    return [found[name] for name in sorted(found)]


def module_plugin(name: str, **hooks: Callable[..., Any]) -> types.SimpleNamespace:
    """A plugin object from functions, for tests: ``module_plugin("x", pre_request=f)``."""
    marked = {key: hookspecs.hookimpl(fn) for key, fn in hooks.items()}
    return types.SimpleNamespace(__name__=name, **marked)
