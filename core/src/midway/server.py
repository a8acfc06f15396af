"""Building and running the aiohttp server: routes, start-up, graceful shutdown, workers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from midway import __version__, deadlines, malformed
from midway.config import ConfigError, Settings
from midway.context import Midway
from midway.errors import error_response
from midway.identity import identity_key, use_identity_key
from midway.keys import install as install_keys
from midway.metrics import Metrics
from midway.plugins import PluginHost
from midway.preflight import bind_problem
from midway.proxy import Proxy

log = logging.getLogger("midway")

MAX_RESTARTS = 5  # worker restarts per minute before the server gives up
EX_CONFIG = 78  # a worker's exit status for a configuration mistake (sysexits.h)
MIDWAY_KEY: web.AppKey[Midway] = web.AppKey("midway", Midway)
PROXY_KEY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
PUBLISHER_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("publisher", asyncio.Task)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """The aiohttp application: core routes, plugin routes, then ``/v1/*``."""
    settings = midway.settings
    malformed.install()  # parser errors must not echo the client's header lines
    # Pass-through clients are named under this instance's secret (created on first start).
    use_identity_key(identity_key(settings))
    app = web.Application(client_max_size=settings.max_body_size, handler_args={
        "max_field_size": 64 * 1024, "max_line_size": 64 * 1024, "max_headers": 512},
        middlewares=[deadlines.middleware])
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

    async def metrics(request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        assert midway.metrics is not None
        return web.Response(body=generate_latest(midway.metrics.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})

    async def not_found(request: web.Request) -> web.Response:
        return error_response(404, f"midway serves /v1/*; no route for {request.path[:200]}")

    app.router.add_get("/", head_root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    install_keys(app, midway, proxy)  # the key store, when [keys] enabled
    midway.plugins.call_sync("register_routes", app=app, midway=midway)
    app.router.add_route("*", "/v1/{tail:[\\s\\S]*}", proxy.handle)
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
        except BaseException:  # start-up stops here: on_cleanup will not run
            await midway.session.close()
            raise
        proxy.refresh()
        if midway.metrics is not None and midway.metrics.peers_dir is not None:
            app[PUBLISHER_KEY] = asyncio.get_running_loop().create_task(
                _publish_forever(midway.metrics))

    async def on_cleanup(app: web.Application) -> None:
        publisher = app.get(PUBLISHER_KEY)
        if publisher is not None:
            publisher.cancel()
        if proxy.finishing:  # post_response of requests whose clients already left
            await asyncio.wait(list(proxy.finishing), timeout=settings.shutdown_timeout)
        await midway.plugins.each("shutdown", swallow=True, midway=midway)
        if midway.session is not None:
            await midway.session.close()
        if proxy.fast is not None:
            await proxy.fast.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def announce(midway: Midway) -> None:
    """The start-up lines: where midway listens and keeps its data, then one line per plugin
    saying what it does as configured (its ``describe`` hook)."""
    settings = midway.settings
    loaded = [i.name for i in midway.plugins.infos if not i.error]
    log.info("midway %s listening on http://%s:%d -> %s; data dir %s; plugins: %s",
             __version__, settings.host, settings.port, settings.upstream, settings.data_dir,
             ", ".join(loaded) or "none")
    for impl in sorted(midway.plugins.impls("describe"), key=lambda i: i.plugin):
        try:
            line = impl.function(*[midway for _ in impl.argnames])
        except Exception:
            midway.plugins.failed(impl.plugin, "describe")
            continue
        if line:
            log.info("  %s: %s", impl.plugin, line)


async def _publish_forever(metrics: Metrics) -> None:
    try:
        while True:
            metrics.publish()
            await asyncio.sleep(1.0)
    finally:
        metrics.publish()


async def serve(settings: Settings, sock: socket.socket | None = None,
                ready: asyncio.Event | None = None, worker_index: int = 0) -> None:
    """Run one server until SIGTERM/SIGINT, then drain open streams and flush plugins."""
    midway = build_midway(settings, worker_index=worker_index, publish=True)
    # An installed plugin that fails to load was logged and is left out; a --plugin the user
    # asked for by name stops start-up.
    asked = [f"--plugin {info.source.split(' ', 1)[1]}: failed to load: {info.error}"
             for info in midway.plugins.infos
             if info.error and info.source.startswith(("file ", "module "))]
    if asked:
        raise ConfigError("\n".join(asked))
    app = build_app(midway)
    runner = deadlines.GuardedRunner(app, deadlines.Limits.of(settings),
                                     handler_cancellation=True, access_log=None,
                                     shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("midway shutting down: %d open streams", app[PROXY_KEY].open_streams)
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
    """Fork the workers and keep them running: a worker that dies is replaced, unless workers
    keep dying (more than ``MAX_RESTARTS`` a minute), when the whole server stops with 1."""

    def spawn(index: int) -> int:
        pid = os.fork()
        if pid == 0:  # child: a full proxy on the shared port (SO_REUSEPORT)
            code = 0
            try:
                runner = getattr(uvloop, "run", None) or asyncio.run
                runner(serve(settings, worker_index=index))
            except ConfigError as exc:  # every worker would fail alike: said once, no restart
                if index == 0:
                    print(f"Error: {exc}", file=sys.stderr, flush=True)
                code = EX_CONFIG
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        return pid

    children = {spawn(index): index for index in range(settings.workers)}
    stopping = False
    restarts: list[float] = []

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        exit_code = os.waitstatus_to_exitcode(code)
        if stopping:
            status = status or exit_code
            continue
        if exit_code == EX_CONFIG:  # a configuration mistake: restarting cannot help
            status = 1
            forward(signal.SIGTERM, None)
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > MAX_RESTARTS:
            log.error("workers keep failing (%d restarts in a minute): stopping", len(restarts))
            status = 1
            forward(signal.SIGTERM, None)
            continue
        log.error("worker %d exited with %d: starting a new one", index, exit_code)
        children[spawn(index)] = index
    sys.exit(status)
