"""Building and running the aiohttp server: routes, start-up, graceful shutdown, workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from midway import __version__, accesslog, deadlines, malformed, paths
from midway.access import is_loopback, metrics_refusal
from midway.background import start_every
from midway.config import ConfigError, Settings
from midway.context import Midway
from midway.errors import MidwayError, error_response
from midway.heap import release_freed_memory
from midway.identity import identity_key, use_identity_key
from midway.metrics import Metrics
from midway.model_list import MODELS, ModelDirectory
from midway.plugins import Impl, PluginHost
from midway.preflight import bind_problem
from midway.proxy import Proxy
from midway.storage.retry import STORE_WAIT
from midway.supervisor import supervise

log = logging.getLogger("midway")

# The drain on SIGTERM: open streams may run until the last FLUSH_SHARE of shutdown_timeout
# (at most FLUSH_RESERVE seconds), which is left for post_response and the plugins' flushes.
FLUSH_SHARE = 0.25
FLUSH_RESERVE = 5.0
MIN_FLUSH = 0.5  # plugins' shutdown gets this much even when the streams took all the rest
MIDWAY_KEY: web.AppKey[Midway] = web.AppKey("midway", Midway)
PROXY_KEY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
PUBLISHER_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("publisher", asyncio.Task)


def check_exposure(settings: Settings, force: bool = False) -> None:
    """Refuse to listen beyond loopback unless clients must authenticate."""
    if is_loopback(settings.host) or force or settings.allow_public:
        return
    if not settings.client_keys_enabled:
        raise ConfigError(
            f"refusing to listen on {settings.host}: not a loopback address and no client keys "
            "are configured, so anyone who can reach it would spend your API keys. Configure "
            "[[midway.client_keys]] (or keys.enabled), or pass --allow-public to force it.")


def runtime_dir(settings: Settings) -> Path:
    """Where the workers of the instance on this port publish their state."""
    return settings.data_dir / "run" / f"port-{settings.port}"


def build_midway(settings: Settings, objects: Iterable[tuple[str, object]] = (),
                 worker_index: int = 0, publish: bool = False) -> Midway:
    """Load plugins and make the instance (no I/O yet)."""
    plugins = PluginHost()
    plugins.hook_timeout = settings.hook_timeout
    plugins.load(only=settings.plugins, extra=settings.extra_plugins, objects=objects)
    metrics = Metrics(worker=worker_index,
                      peers_dir=runtime_dir(settings) if publish else None)
    plugins.on_failure.append(lambda p, h: metrics.plugin_errors.__setitem__(
        (p, h), metrics.plugin_errors[(p, h)] + 1))
    midway = Midway(settings, plugins, metrics)
    midway.worker_index = worker_index
    return midway


def build_app(midway: Midway) -> web.Application:
    """The aiohttp application: core routes, plugin routes, then ``/v1/*`` (and the
    Vertex and Bedrock client formats' paths)."""
    settings = midway.settings
    malformed.install()  # parser errors must not echo the client's header lines
    # Pass-through clients are named under this instance's secret (created on first start).
    use_identity_key(identity_key(settings))
    app = web.Application(client_max_size=settings.max_body_size, handler_args={
        "max_field_size": 64 * 1024, "max_line_size": 64 * 1024, "max_headers": 512})
    proxy = Proxy(midway)
    app[MIDWAY_KEY] = midway
    app[PROXY_KEY] = proxy

    async def head_root(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__,
                                  "worker": midway.worker_index,
                                  "open_streams": proxy.open_streams,
                                  # asyncio tasks alive: leak checks (soak, hardening tests)
                                  "tasks": len(asyncio.all_tasks())})

    async def hello(request: web.Request) -> web.Response:
        # Claude Code's connection-warming probe (HEAD /api/hello): answered here, never
        # forwarded, so start-up costs no upstream round trip.
        return web.Response(status=200)

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        problems = await readiness(midway)
        return web.json_response({"status": "not ready" if problems else "ready",
                                  "problems": problems}, status=503 if problems else 200)

    async def metrics(request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        refusal = metrics_refusal(request, midway)
        if refusal is not None:
            return error_response(403, refusal)
        assert midway.metrics is not None
        return web.Response(body=generate_latest(midway.metrics.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})

    async def not_found(request: web.Request) -> web.Response:
        try:
            paths.check(request.rel_url.raw_path)  # e.g. //v1/messages: 400, the spelling to use
        except MidwayError as exc:
            return error_response(exc.status, exc.message)
        return error_response(404, f"midway serves /v1/*; no route for {request.path[:200]}")

    app.router.add_get("/", head_root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/api/hello", hello)  # HEAD too (aiohttp adds it to a GET route)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    midway.plugins.call_sync("register_routes", app=app, midway=midway)
    app.router.add_route("*", "/v1/{tail:[\\s\\S]*}", proxy.handle)
    # Vertex rawPredict clients (midway.vertex_format) may leave out the /v1 prefix;
    # Bedrock InvokeModel clients (midway.bedrock_format) have their own paths.
    app.router.add_route("*", "/projects/{tail:[\\s\\S]*}", proxy.handle)
    app.router.add_route("*", "/model/{tail:[\\s\\S]*}", proxy.handle)
    app.router.add_route("*", "/inference-profiles{tail:[\\s\\S]*}", proxy.handle)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", not_found)

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=settings.pool_size, limit_per_host=0,
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        midway.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=settings.trust_env,
            # A proxy must never keep one client's cookies and send them with another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=proxy.timeout)
        try:
            await midway.plugins.each("register_metrics", swallow=False, midway=midway)
            await midway.plugins.each("startup", swallow=False, midway=midway)
            ModelDirectory.publish(midway)  # a bad [models] table stops start-up here
        except BaseException:  # start-up stops here: on_cleanup will not run
            await midway.session.close()
            raise
        proxy.refresh()
        midway.started = True
        if midway.metrics is not None and midway.metrics.peers_dir is not None:
            # a full disk or a removed directory must not stop publishing for good
            app[PUBLISHER_KEY] = start_every(1.0, midway.metrics.publish, first=0,
                                             name="metrics: publishing this worker's snapshot",
                                             log=log)

    async def on_cleanup(app: web.Application) -> None:
        publisher = app.get(PUBLISHER_KEY)
        if publisher is not None:
            publisher.cancel()
            assert midway.metrics is not None
            with contextlib.suppress(OSError):  # the last snapshot, if the disk lets us
                midway.metrics.publish()
        loop = asyncio.get_running_loop()
        deadline = proxy.deadline or loop.time() + settings.shutdown_timeout
        if proxy.finishing:  # post_response of requests whose clients already left
            await asyncio.wait(list(proxy.finishing), timeout=max(deadline - loop.time(), 0))
        try:  # plugins flush their queues (audit records, billing settlements) in the budget
            await asyncio.wait_for(midway.plugins.each("shutdown", swallow=True, midway=midway),
                                   max(deadline - loop.time(), MIN_FLUSH))
        except TimeoutError:
            log.error("plugins did not finish flushing within shutdown_timeout (%.0f s): what "
                      "they had not written is lost; raise shutdown_timeout",
                      settings.shutdown_timeout)
        if midway.session is not None:
            await midway.session.close()
        if proxy.fast is not None:
            await proxy.fast.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def direct_proxy(app: web.Application) -> deadlines.Direct | None:
    """``/v1/`` and the proxy's handler when aiohttp's router would send every request under
    ``/v1/`` to it (the started application has no route of a plugin's under ``/v1``, no
    sub-application, no middleware and no ``on_response_prepare`` signal, which only the
    router's path runs): what :class:`~midway.deadlines.GuardedRunner` calls directly."""
    if app.middlewares or app.on_response_prepare or not hasattr(URL, "path_safe"):
        return None
    proxy = app[PROXY_KEY]
    found = False
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            return None
        if not resource.canonical.startswith("/v1"):
            continue
        if resource.canonical != "/v1/{tail}" or found or \
                any(route.handler != proxy.handle for route in resource):
            return None
        found = True
    return ("/v1/", proxy.handle) if found else None


async def readiness(midway: Midway) -> list[str]:
    """What keeps this instance from taking traffic (empty: ready): not started yet,
    draining, or what a plugin's ``check_ready`` says, each bounded by ``ready_timeout``."""
    if midway.draining:
        return ["draining: shutting down, taking no new work"]
    if not midway.started:
        return ["starting: plugins are not started yet"]
    timeout = midway.settings.ready_timeout

    async def ask(impl: Impl) -> list[str]:
        try:
            async with asyncio.timeout(timeout):
                found = impl.function(*[midway for _ in impl.argnames])
                if inspect.isawaitable(found):
                    found = await found
        except TimeoutError:
            return [f"{impl.plugin}: no answer within {timeout:g} s"]
        except Exception as exc:
            return [f"{impl.plugin}: {type(exc).__name__}: {str(exc)[:200]}"]
        return [f"{impl.plugin}: {p}" for p in (found or [])]

    answers = await asyncio.gather(*(ask(i) for i in midway.plugins.impls("check_ready")))
    return [problem for answer in answers for problem in answer]


def announce(midway: Midway) -> None:
    """The start-up lines: where midway listens and keeps its data, then one line per plugin
    saying what it does as configured (its ``describe`` hook)."""
    settings = midway.settings
    loaded = [i.name for i in midway.plugins.infos if not i.error and i.source != "built-in"]
    log.info("midway %s listening on http://%s:%d -> %s; data dir %s; plugins: %s",
             __version__, settings.host, settings.port, settings.upstream, settings.data_dir,
             ", ".join(loaded) or "none")
    proxy_models = midway.services.get(MODELS)
    log.info("  models: %s", proxy_models.describe() if proxy_models is not None else
             "GET /v1/models forwarded upstream (nothing listed in [models] or routed by name)")
    for impl in sorted(midway.plugins.impls("describe"), key=lambda i: i.plugin):
        try:
            line = impl.function(*[midway for _ in impl.argnames])
        except Exception:
            midway.plugins.failed(impl.plugin, "describe")
            continue
        if line:
            log.info("  %s: %s", impl.plugin, line)


def settle_heap() -> None:
    """Once started: what start-up built (modules, plugins, settings, prices) moves out of the
    garbage collector's sight (``gc.freeze``), so that the collections requests cause do not
    walk it again and again — measured at about a tenth of the CPU of a request with every
    governance plugin on (docs/benchmarks.md); and the memory start-up freed goes back to the
    system (about 2 MB of the relay's resident memory)."""
    gc.collect()
    gc.freeze()
    release_freed_memory()


async def serve(settings: Settings, sock: socket.socket | None = None,
                ready: asyncio.Event | None = None, worker_index: int = 0,
                supervisor: int | None = None) -> None:
    """Run one server until SIGTERM/SIGINT (or, for a worker, until the end of the pipe
    ``supervisor`` reports that its supervisor is gone), then drain it (:func:`drain`)."""
    midway = build_midway(settings, worker_index=worker_index, publish=True)
    # An installed plugin that fails to load was logged and is left out; a --plugin the user
    # asked for by name stops start-up.
    asked = [f"--plugin {info.source.split(' ', 1)[1]}: failed to load: {info.error}"
             for info in midway.plugins.infos
             if info.error and info.source.startswith(("file ", "module "))]
    if asked:
        raise ConfigError("\n".join(asked))
    app = build_app(midway)
    # The startup hooks run in this task's context; each is bounded by hook_timeout, so a
    # wait longer than half of it would end in a timeout rather than the line naming the store.
    STORE_WAIT.set(min(settings.store_wait, settings.hook_timeout / 2))
    runner = deadlines.GuardedRunner(app, deadlines.Limits.of(settings), direct=direct_proxy,
                                     handler_cancellation=True, access_log=None,
                                     shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def begin_drain() -> None:
        midway.draining = True  # /readyz says 503 from now on, before the drain starts
        stop.set()

    # Before the port opens: a SIGTERM as soon as it answers (an orchestrator's) drains, and
    # does not kill the process with what it has not flushed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin_drain)
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, settings.host, settings.port,
                           reuse_port=settings.workers > 1 or None)
    try:
        await site.start()
    except OSError as exc:  # taken since the preflight check, or never checked (tests)
        await runner.cleanup()
        raise ConfigError(bind_problem(settings, exc)) from None
    if worker_index == 0:
        announce(midway)
    if supervisor is not None:
        def orphaned() -> None:  # readable: at its end, as the supervisor is gone
            loop.remove_reader(supervisor)
            log.error("worker %d: its supervisor is gone; shutting down", worker_index)
            begin_drain()
        loop.add_reader(supervisor, orphaned)
    if ready is not None:
        ready.set()
    settle_heap()  # after the signal handlers: a SIGTERM meanwhile drains as it should
    await stop.wait()
    if settings.drain_delay > 0:
        # Still listening, /readyz already 503: a load balancer stops sending new work before
        # the listener closes (Kubernetes removes the endpoint while SIGTERM is delivered).
        log.info("midway draining: taking requests for %g s more while /readyz says 503",
                 settings.drain_delay)
        await asyncio.sleep(settings.drain_delay)
    await drain(runner, app[PROXY_KEY], settings.shutdown_timeout)
    accesslog.flush()


async def drain(runner: deadlines.GuardedRunner, proxy: Proxy, budget: float) -> None:
    """Stop within ``budget`` seconds in all: stop accepting, let open requests finish until
    the last share of the budget, cut the rest (``Proxy.cut``), then let ``post_response``
    and the plugins' ``shutdown`` (their flushes) use what is left."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    proxy.deadline = deadline = started + budget
    proxy.draining = True
    log.info("midway shutting down: %d open streams, %.0f s to finish", proxy.open_streams,
             budget)
    for site in list(runner.sites):
        await site.stop()
    streams_end = deadline - min(FLUSH_SHARE * budget, FLUSH_RESERVE)
    if not await proxy.drained(streams_end - loop.time()):
        cut = proxy.cut()
        log.warning("shutdown: %d request(s) still open after %.1f s cut with an "
                    "overloaded_error (clients retry elsewhere)", cut, loop.time() - started)
        await proxy.drained(deadline - loop.time())
    # aiohttp's own wait for handlers (after which it cancels them) ends at the deadline too
    # (0 would mean no limit to aiohttp).
    runner.shutdown_timeout = max(deadline - loop.time(), 0.01)
    await runner.cleanup()


def run(settings: Settings) -> None:
    """Blocking entry for ``midway serve``: one process, or ``workers`` on one port."""
    shutil.rmtree(runtime_dir(settings), ignore_errors=True)  # a previous run's snapshots
    uvloop: Any = None
    if os.environ.get("MIDWAY_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop  # optional, not on Windows: a faster event loop
        except ImportError:
            uvloop = None
    if settings.workers <= 1:
        if uvloop is not None:
            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
        return
    _run_workers(settings, uvloop)


def _run_workers(settings: Settings, uvloop: object) -> None:
    def work(index: int, supervisor: int) -> None:
        runner = getattr(uvloop, "run", None) or asyncio.run
        runner(serve(settings, worker_index=index, supervisor=supervisor))

    sys.exit(supervise(settings.workers, work))
