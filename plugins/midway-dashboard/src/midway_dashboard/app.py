"""The dashboard's HTTP side: pages, JSON endpoints and static files under ``/_midway/``."""

from __future__ import annotations

import hashlib
import html
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from midway import __version__
from midway.config import ConfigError
from midway.context import Midway
from midway.errors import error_response
from midway.secrets_ref import resolve
from midway.server import PROXY_KEY
from midway.services import ServiceKey
from midway_dashboard import panels
from midway_dashboard.access import COOKIE, COOKIE_PATH, Access, Verdict
from midway_dashboard.attempts import AttemptLimiter, Outcome
from midway_dashboard.config import DashboardConfig
from midway_dashboard.sessions import Sessions
from midway_dashboard.window import TrafficWindow

PREFIX = "/_midway"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Page name → (title, plugin whose service it shows, or None for the core's own traffic).
PAGES: dict[str, tuple[str, str | None]] = {
    "traffic": ("Traffic", None),
    "spend": ("Spend", "billing"),
    "sessions": ("Sessions", "billing"),
    "cache": ("Cache", "cache"),
    "upstreams": ("Upstreams", "router"),
    "requests": ("Requests", "audit"),
}

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                "": "text/plain; charset=utf-8"}
STATIC_FILES = ("dashboard.js", "dashboard.css", "vendor/uplot/uPlot.iife.min.js",
                "vendor/uplot/uPlot.min.css", "vendor/uplot/LICENSE")

SECURITY_HEADERS = {
    # No inline script or style anywhere: the pages load their code from /_midway/static/.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

RANGES = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24),
          "7d": timedelta(days=7), "30d": timedelta(days=30)}
TRAFFIC_CACHE_SECONDS = 1.0
LOGIN_FORM_MAX_BYTES = 8192
STATUS_FILTER = re.compile(r"[1-5](\d\d|xx)|error")
ACTIVE = ' class="active" aria-current="page"'


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, default=_json_default,
                        option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json",
                        headers={"cache-control": "no-store"})


#: ``midway.services[SIGN_IN]``: ``(label, url)`` of a sign-in page an identity plugin offers
#: people instead of the admin key (the key stays for automation).
SIGN_IN = "dashboard.sign_in"


class Dashboard:
    """The plugin's state in one running midway: the traffic window, the gate, the routes.

    Built in ``register_routes`` (routes must exist before start-up) and published as
    ``midway.services[DASHBOARD]``."""

    def __init__(self, midway: Midway, app: web.Application) -> None:
        self.midway = midway
        self.app = app
        # Routes are added before start-up, where a bad table can stop midway: keep the error
        # for start() and run on defaults until then.
        self.config_error: ConfigError | None = None
        try:
            config = midway.options("dashboard", DashboardConfig)
        except ConfigError as exc:
            self.config_error = exc
            config = DashboardConfig()
        self.window = TrafficWindow(config.window_seconds, config.max_events)
        self.refresh_ms = int(config.refresh_seconds * 1000)
        self.session_seconds = config.session_hours * 3600
        self.store = config.store
        self.limiter = AttemptLimiter(free=config.free_attempts, spacing=config.attempt_spacing,
                                      max_wait=config.attempt_max_wait)
        self.access: Access | None = None  # set at start-up, once the admin key is resolved
        self.started_at = time.time()
        self._static = _load_static()
        self._traffic: tuple[float, dict[str, Any]] | None = None

    async def start(self) -> None:
        """Resolve the admin key and open the session store; a bad config or an unresolvable
        key aborts start-up."""
        if self.config_error is not None:
            raise self.config_error
        ref = self.midway.settings.admin_key
        admin_key = resolve(ref) if ref else None
        sessions = None
        if admin_key:
            sessions = Sessions(self.store, admin_key, self.session_seconds)
            await sessions.open()
        self.access = Access(admin_key, sessions, self.limiter)

    async def stop(self) -> None:
        if self.access is not None and self.access.sessions is not None:
            await self.access.sessions.close()

    # -- routes ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PREFIX, self.guard(self._redirect_home, public=True))
        r.add_get(f"{PREFIX}/", self.guard(self.page))
        for name in PAGES:
            if name != "traffic":
                r.add_get(f"{PREFIX}/{name}", self.guard(self.page))
        r.add_get(PREFIX + "/requests/{request_id}", self.guard(self.page))
        r.add_get(PREFIX + "/sessions/{session_id}", self.guard(self.page))
        r.add_get(f"{PREFIX}/login", self.guard(self.login_form, public=True))
        r.add_post(f"{PREFIX}/login", self.guard(self.login, public=True))
        r.add_post(f"{PREFIX}/logout", self.guard(self.logout, public=True))
        r.add_get(PREFIX + "/static/{path:.+}", self.guard(self.static, public=True))
        r.add_get(f"{PREFIX}/api/status", self.guard(self.api_status))
        r.add_get(f"{PREFIX}/api/traffic", self.guard(self.api_traffic))
        r.add_get(f"{PREFIX}/api/spend", self.guard(self.api_spend))
        r.add_get(f"{PREFIX}/api/sessions", self.guard(self.api_sessions))
        r.add_get(f"{PREFIX}/api/claude-sessions", self.guard(self.api_session_list))
        r.add_get(PREFIX + "/api/claude-sessions/{session_id}", self.guard(self.api_session))
        r.add_get(f"{PREFIX}/api/cache", self.guard(self.api_cache))
        r.add_get(f"{PREFIX}/api/upstreams", self.guard(self.api_upstreams))
        r.add_get(f"{PREFIX}/api/requests", self.guard(self.api_requests))
        r.add_get(PREFIX + "/api/requests/{request_id}", self.guard(self.api_request))

    def guard(self, handler: Handler, public: bool = False) -> Handler:
        """Wrap a handler with the access check and the security headers.

        ``public`` handlers (login, static files) are reachable without the admin key, but
        still hidden from non-loopback clients when no admin key is configured.
        """

        async def guarded(request: web.Request) -> web.StreamResponse:
            access = self.access
            if access is None:
                return error_response(503, "midway is starting")
            verdict = await access.check(request)
            if verdict is Verdict.HIDDEN:
                # Same answer as any unknown path: the dashboard does not reveal itself.
                return error_response(404, "midway serves /v1/*; no route for "
                                      f"{request.path[:200]}")
            if verdict is Verdict.BUSY and not public:
                response: web.StreamResponse = error_response(
                    429, "too many wrong admin keys from this address; slow down",
                    headers={"retry-after": str(int(access.limiter.max_wait))})
            elif verdict in (Verdict.LOGIN, Verdict.BUSY) and not public:
                response = self._unauthorized(request)
            else:
                response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("cache-control", "no-store")
            return response

        return guarded

    def _unauthorized(self, request: web.Request) -> web.Response:
        if request.path.startswith(f"{PREFIX}/api/"):
            return error_response(401, "the dashboard needs the admin key",
                                  headers={"www-authenticate": 'Bearer realm="midway"'})
        return self._login_page(request.path_qs, status=401)

    async def _redirect_home(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"location": f"{PREFIX}/"})

    # -- pages -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        request_id = request.match_info.get("request_id")
        session_id = request.match_info.get("session_id")
        if request_id:
            name, title, current = "request", "Request", "requests"
        elif session_id:
            name, title, current = "session", "Session", "sessions"
        else:
            name = request.path[len(PREFIX) + 1:] or "traffic"
            title, current = PAGES[name][0], name
        nav = "".join(
            f'<a href="{PREFIX}/{"" if key == "traffic" else key}"'
            f'{ACTIVE if key == current else ""}>{label}</a>' for key, (label, _) in PAGES.items())
        logout = (f'<form method="post" action="{PREFIX}/logout" class="logout">'
                  '<button type="submit">Log out</button></form>'
                  if self.access is not None and self.access.protected else "")
        body = (f'<body data-page="{name}" data-refresh="{self.refresh_ms}"'
                f' data-request-id="{html.escape(request_id or "")}"'
                f' data-session-id="{html.escape(session_id or "")}">'
                f'<header><a class="brand" href="{PREFIX}/">midway</a><nav>{nav}</nav>'
                f'<span class="version">v{html.escape(__version__)}</span>{logout}</header>'
                f'<main><h1>{title}</h1><div id="content" aria-live="polite"></div></main>'
                f'<script src="{PREFIX}/static/vendor/uplot/uPlot.iife.min.js"></script>'
                f'<script src="{PREFIX}/static/dashboard.js"></script></body>')
        return _html(title, body)

    def _login_page(self, next_path: str, status: int = 200, error: str = "") -> web.Response:
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        body = ('<body data-page="login"><main class="login"><h1>midway</h1>'
                '<p>This dashboard needs the admin key.</p>'
                f'{message}<form method="post" action="{PREFIX}/login">'
                '<label>Admin key <input type="password" name="key" autocomplete="current-password"'
                ' required autofocus></label>'
                f'<input type="hidden" name="next" value="{html.escape(_safe_next(next_path))}">'
                '<button type="submit">Log in</button></form>'
                f'{self._sign_in_link()}</main></body>')
        return _html("Log in", body, status)

    def _sign_in_link(self) -> str:
        """People sign in through an identity provider when a plugin offers it: it publishes
        ``(label, url)`` under :data:`SIGN_IN` (midway-identity, for its admin groups)."""
        offered = self.midway.services.get(SIGN_IN)
        if not offered:
            return ""
        label, url = offered
        return (f'<p class="sign-in"><a id="sign-in" href="{html.escape(url)}">'
                f'{html.escape(label)}</a></p>')

    async def login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request.query.get("next", f"{PREFIX}/"))

    async def login(self, request: web.Request) -> web.StreamResponse:
        access = self.access
        assert access is not None
        # Anyone may post here: read no more than a login form needs.
        if request.content_length is None or request.content_length > LOGIN_FORM_MAX_BYTES:
            return error_response(413, "a login form is a few hundred bytes")
        form = await request.post()
        next_path = _safe_next(str(form.get("next", "")))
        if not access.protected:
            return _see_other(next_path)
        # Past a few wrong keys from this address, attempts are spaced out; the right key
        # still logs in (attempts.py).
        outcome = await access.try_key(request, str(form.get("key", "")))
        if outcome is Outcome.BUSY:
            return self._login_page(next_path, 429, "Too many attempts from this address are "
                                    "waiting; try again in a few seconds.")
        if outcome is Outcome.WRONG:
            return self._login_page(next_path, 401, "That is not the admin key.")
        assert access.sessions is not None
        response = _see_other(next_path)
        response.set_cookie(COOKIE, await access.sessions.create(), path=COOKIE_PATH,
                            httponly=True,
                            samesite="Strict", secure=request.secure,
                            max_age=int(access.session_seconds))
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        access = self.access
        cookie = request.cookies.get(COOKIE)
        if access is not None and access.sessions is not None and cookie:
            await access.sessions.end(cookie)  # the session ends here, not just in the browser
        response = _see_other(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=COOKIE_PATH)
        return response

    async def static(self, request: web.Request) -> web.Response:
        entry = self._static.get(request.match_info["path"])
        if entry is None:
            return error_response(404, "no such file")
        body, content_type, etag = entry
        if request.headers.get("if-none-match") == etag:
            return web.Response(status=304, headers={"etag": etag})
        return web.Response(body=body, headers={"content-type": content_type, "etag": etag,
                                                "cache-control": "no-cache"})

    # -- JSON --------------------------------------------------------------------------------

    async def api_status(self, request: web.Request) -> web.Response:
        return json_response({"version": __version__, "started_at": self.started_at,
                              "worker": self.midway.worker_index,
                              "refresh_ms": self.refresh_ms,
                              "panels": panels.availability(self.midway)})

    async def api_traffic(self, request: web.Request) -> web.Response:
        # Computing the figures of a full window takes tens of ms on the event loop: viewers
        # polling at the same time share one computation per second.
        now = time.monotonic()
        if self._traffic is None or now - self._traffic[0] >= TRAFFIC_CACHE_SECONDS:
            self._traffic = (now, self.window.traffic())
        data = dict(self._traffic[1])
        data["worker"] = self.midway.worker_index
        data["open_streams"] = self.app[PROXY_KEY].open_streams
        data["in_flight"] = None
        metrics = self.midway.metrics
        if metrics is not None:
            # The core's per-worker snapshots: in-flight figures for every worker on the port,
            # while the window above is this worker's own.
            snapshots = metrics.snapshots()
            data["workers"] = len(snapshots)
            data["in_flight"] = sum(int(s.get("inflight", 0)) for s in snapshots)
            data["open_streams"] = sum(int(s.get("open_streams", 0)) for s in snapshots)
            data["total_all_workers"] = sum(int(row[-1]) for s in snapshots
                                            for row in s.get("requests", ()))
        return json_response(data)

    async def api_spend(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "team")
        bucket = request.query.get("bucket", "hour")
        if by not in panels.SPEND_DIMENSIONS or bucket not in panels.SPEND_BUCKETS:
            return error_response(400, f"by must be one of {', '.join(panels.SPEND_DIMENSIONS)}"
                                  f" and bucket one of {', '.join(panels.SPEND_BUCKETS)}")
        return await self._panel(panels.spend(self.midway, by, bucket))

    async def api_sessions(self, request: web.Request) -> web.Response:
        bucket = request.query.get("bucket", "hour")
        if bucket not in panels.SPEND_BUCKETS:
            return error_response(400, f"bucket must be one of "
                                  f"{', '.join(panels.SPEND_BUCKETS)}")
        return await self._panel(panels.sessions(self.midway, bucket))

    async def api_session_list(self, request: web.Request) -> web.Response:
        q = request.query
        filters: dict[str, Any] = {}
        for key in ("principal", "team"):
            value = q.get(key, "").strip()
            if value:
                filters[key] = value[:200]
        since = q.get("since", "7d")
        if since not in RANGES:
            return error_response(400, f"since must be one of {', '.join(RANGES)}")
        try:
            limit = max(1, min(int(q.get("limit", 100)), 500))
        except ValueError:
            return error_response(400, "limit must be a number")
        start = datetime.now(UTC) - RANGES[since]
        return await self._panel(panels.session_list(self.midway, start, limit, filters))

    async def api_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        data = await self._panel_data(panels.session(self.midway, session_id))
        if data.get("installed") and data.get("session") is None and "error" not in data:
            return json_response({**data, "error": f"no session {session_id[:200]}"}, 404)
        return json_response(data)

    async def api_cache(self, request: web.Request) -> web.Response:
        data = await self._panel_data(panels.cache(self.midway))
        data["window"] = self.window.cache_series()
        return json_response(data)

    async def api_upstreams(self, request: web.Request) -> web.Response:
        data = await self._panel_data(panels.upstreams(self.midway))
        data["window"] = self.window.by_upstream()
        return json_response(data)

    async def api_requests(self, request: web.Request) -> web.Response:
        q = request.query
        filters: dict[str, Any] = {}
        for key in ("principal", "model", "text"):
            value = q.get(key, "").strip()
            if value:
                filters[key] = value[:500]
        status = q.get("status", "").strip().lower()
        if status:
            # audit understands an exact status, a class ("4xx") or "error".
            if not STATUS_FILTER.fullmatch(status):
                return error_response(400, "status must be like 200, 4xx or error")
            filters["status"] = int(status) if status.isdigit() else status
        if q.get("since") in RANGES:
            filters["since"] = datetime.now(UTC) - RANGES[q["since"]]
        try:
            limit = max(1, min(int(q.get("limit", 100)), 500))
        except ValueError:
            return error_response(400, "limit must be a number")
        data = await self._panel_data(panels.requests(self.midway, filters, limit))
        if not data.get("installed"):
            # Without audit there are no bodies, but this process still knows what it served.
            data["recent"] = self.window.recent(limit)
        return json_response(data)

    async def api_request(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        data = await self._panel_data(panels.request_record(self.midway, request_id))
        if data.get("installed") and data.get("record") is None and "error" not in data:
            return json_response({**data, "error": f"no audit record for {request_id}"}, 404)
        return json_response(data)

    async def _panel(self, pending: Awaitable[dict[str, Any]]) -> web.Response:
        return json_response(await self._panel_data(pending))

    async def _panel_data(self, pending: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await pending
        except panels.ServiceError as exc:
            return {"installed": True, "error": str(exc)}


def _html(title: str, body: str, status: int = 200) -> web.Response:
    text = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f'<title>midway · {html.escape(title)}</title>'
            f'<link rel="stylesheet" href="{PREFIX}/static/vendor/uplot/uPlot.min.css">'
            f'<link rel="stylesheet" href="{PREFIX}/static/dashboard.css">'
            f'</head>{body}</html>')
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={"cache-control": "no-store"})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"location": location})


def _safe_next(path: str) -> str:
    """Only redirect within the dashboard (no open redirect to another site)."""
    if path.startswith(f"{PREFIX}/") and not path.startswith(f"{PREFIX}//") and \
            "\\" not in path and "\n" not in path and "\r" not in path:
        return path
    return f"{PREFIX}/"


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    root = resources.files("midway_dashboard") / "static"
    files = {}
    for name in STATIC_FILES:
        body = (root / name).read_bytes()
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        files[name] = (body, STATIC_TYPES.get(suffix, STATIC_TYPES[""]), etag)
    return files


DASHBOARD: ServiceKey[Dashboard] = ServiceKey("dashboard")
