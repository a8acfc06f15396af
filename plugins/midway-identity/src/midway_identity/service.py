"""The plugin's state in one running midway: the IdP, the store, the token minter, and the
HTTP endpoints of Claude Code's gateway sign-in protocol (served at ``GET /protocol``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from aiohttp import web

from midway.access import host_name, host_refusal
from midway.config import ConfigError
from midway.context import Midway
from midway.errors import MidwayError, error_response
from midway.exchange import Principal
from midway.services import ServiceKey
from midway_identity import pages
from midway_identity.config import IdentityConfig
from midway_identity.idp import IdP, IdPError
from midway_identity.store import IdentityStore, Person, Session, normalise_user_code
from midway_identity.tokens import Minter, Sealer, TokenError, looks_like_jwt, signing_key

log = logging.getLogger("midway.identity")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
BROWSER_COOKIE = "midway_signin"
# Matches no model name: a signed-in person whose groups allow nothing.
NOTHING = "\x00no model"
MAX_FORM = 16 * 1024
# A refresh token spent this recently and presented again is two refreshes of one client
# crossing (two terminals sharing one sign-in), not a stolen copy: both get tokens.
REUSE_GRACE = 10.0


def person_id(issuer: str, subject: str) -> str:
    """A signed-in person's stable id: the same for every sign-in of one IdP subject."""
    return "oidc-" + hashlib.sha256(f"{issuer}\x00{subject}".encode()).hexdigest()[:24]


def settings_checksum(settings: dict[str, Any]) -> str:
    """``sha256:`` + hex SHA-256 of the settings as Claude Code serialises them: keys sorted
    at every level, no whitespace, non-ASCII kept as is (JSON.stringify)."""
    text = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(text).hexdigest()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _oauth_refusal(message: str) -> web.Response:
    return _oauth_error("access_denied", 403, message)


def _page_refusal(message: str) -> web.Response:
    return pages.failed(message, 403)


def _oauth_error(error: str, status: int = 400, description: str = "") -> web.Response:
    body: dict[str, str] = {"error": error}
    if description:
        body["error_description"] = description
    return web.json_response(body, status=status, headers=NO_STORE)


def _groups(claims: dict[str, Any], claim: str) -> tuple[str, ...]:
    value: Any = claims
    for part in claim.split("."):  # a nested claim: "realm_access.roles"
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(dict.fromkeys(str(v) for v in value if isinstance(v, str) and v))
    return ()


class RateLimit:
    """At most ``limit`` events per ``window`` seconds per client address (RFC 8628 5.1)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.events: dict[str, deque[float]] = {}

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        if len(self.events) > 10_000:
            self.events.clear()
        events = self.events.setdefault(address, deque())
        while events and now - events[0] > self.window:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True


class Identity:
    def __init__(self, midway: Midway, config: IdentityConfig) -> None:
        self.midway = midway
        self.config = config
        settings = midway.settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.public_url = config.public_url or f"http://{host}:{settings.port}"
        self.store = IdentityStore(config.store, config.schema)
        self.idp = IdP(config)
        self.minter = Minter(signing_key(config.signing_key, midway.data_dir),
                             self.public_url, config.token_seconds)
        self.sealer = Sealer(signing_key(config.signing_key, midway.data_dir,
                                         b"midway-identity sealed idp tokens v1"))
        self.idp_problem: str | None = "the IdP's discovery document was not read yet"
        self._checked: dict[str, tuple[float, Session | None]] = {}
        self._retry: asyncio.Task[None] | None = None
        self.device_limit = RateLimit(30, 300.0)
        self.verify_limit = RateLimit(60, 300.0)

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.idp.discover()
            self.idp_problem = None
        except IdPError as exc:
            if "names issuer" in str(exc) or "has no" in str(exc):
                raise ConfigError(f"[identity] issuer: {exc}") from None
            # Unreachable: not a crash loop. /readyz says so and sign-ins answer 503 until the
            # IdP answers; tokens already issued keep working (they are checked locally).
            self.idp_problem = f"identity provider unreachable: {exc}"
            log.warning("%s; retrying every 10 s (GET /readyz is 503 until then)",
                        self.idp_problem)
            self._retry = asyncio.create_task(self._rediscover())

    async def _rediscover(self) -> None:
        while self.idp_problem is not None:
            await asyncio.sleep(10)
            try:
                await self.idp.discover()
                self.idp_problem = None
                log.info("identity: the IdP answers again")
            except IdPError as exc:
                self.idp_problem = f"identity provider unreachable: {exc}"

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        await self.store.close()

    async def ready(self) -> list[str]:
        problems = [self.idp_problem] if self.idp_problem else []
        try:
            await self.store.db.ping()
        except Exception as exc:
            problems.append(f"identity store: {type(exc).__name__}")
        return problems

    def describe(self) -> str:
        c = self.config
        groups = (f"{len(c.group_models)} group model allowlist(s)" if c.group_models
                  else "no per-group model limit")
        admins = ", ".join(c.admin_groups) or "none (dashboard sign-in off)"
        return (f"sign-in through {c.issuer} at {self.public_url}/device; tokens "
                f"{c.token_seconds:g}s, sessions {c.session_seconds:g}s, groups claim "
                f"{c.groups_claim!r}, {groups}, admin groups: {admins}, revocation seen "
                f"within {c.revocation_cache_seconds:g}s")

    # -- who is calling -----------------------------------------------------------------------

    def models_for(self, groups: tuple[str, ...]) -> tuple[str, ...]:
        table = self.config.group_models
        if not table:
            return ()
        allowed = [g for group in groups for g in table.get(group, ())]
        if not any(group in table for group in groups):
            allowed = list(self.config.default_models)
        return tuple(dict.fromkeys(allowed)) or (NOTHING,)

    def principal(self, session: Session) -> Principal:
        p = session.person
        return Principal(id=p.person_id, name=p.name or p.email or p.subject, kind="oidc",
                         key_id=session.id[:8], subject=p.subject, email=p.email,
                         groups=p.groups, models=self.models_for(p.groups))

    async def session_of(self, token: str) -> Session:
        """The live session a bearer token stands for; :class:`MidwayError` 401 otherwise."""
        try:
            claims = self.minter.verify(token)
        except TokenError as exc:
            raise _signin_again("expired" if str(exc) == "expired" else "not valid") from None
        jti = str(claims["jti"])
        now = time.monotonic()
        cached = self._checked.get(jti)
        if cached is not None and now - cached[0] < self.config.revocation_cache_seconds:
            session = cached[1]
        else:
            session = await self.store.session(jti)
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked[jti] = (now, session)
        if session is None or session.revoked_at is not None:
            raise _signin_again("revoked")
        if session.person.person_id != claims.get("sub"):
            raise _signin_again("not valid")
        return session

    async def authenticate(self, credential: str | None) -> Principal | None:
        if not credential or not looks_like_jwt(credential):
            return None
        return self.principal(await self.session_of(credential))

    # -- routes -------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        oauth, page = self._named(_oauth_refusal), self._named(_page_refusal)
        r.add_get("/.well-known/oauth-authorization-server", oauth(self.metadata))
        r.add_get("/protocol", oauth(self.protocol))
        r.add_post("/oauth/device_authorization", oauth(self.device_authorization))
        r.add_post("/oauth/token", oauth(self.token))
        r.add_post("/oauth/revoke", oauth(self.revoke))
        r.add_get("/device", page(self.device_page))
        r.add_post("/device", page(self.device_submit))
        r.add_get("/oauth/callback", page(self.callback))
        r.add_get("/managed/settings", oauth(self.managed_settings))
        r.add_get("/_midway/identity/login", page(self.dashboard_login))

    def _named(self, refuse: Callable[[str], web.Response]
               ) -> Callable[[Handler], Handler]:
        """A route's handler behind the ``Host`` check (DNS rebinding): a page whose own name
        resolves to this loopback gateway would otherwise start sign-ins, read their codes
        and poll for the tokens a person signs in to, as this gateway's own origin. Loopback
        names, ``[midway] allowed_hosts`` and ``public_url``'s host are answered."""
        settings = self.midway.settings
        public = host_name(urlsplit(self.config.public_url).netloc) \
            if self.config.public_url else None
        also = (public,) if public else ()

        def wrap(handler: Handler) -> Handler:
            async def named(request: web.Request) -> web.StreamResponse:
                refusal = host_refusal(request, settings, also=also)
                if refusal is not None:
                    return refuse(refusal)
                return await handler(request)
            return named
        return wrap

    def base(self, request: web.Request) -> str:
        """The URL clients and browsers reach midway at: ``[identity] public_url``, else the
        origin the request was addressed to, a name of this gateway (``_named`` checked it;
        set public_url in production)."""
        return self.config.public_url or f"{request.scheme}://{request.host}"

    async def metadata(self, request: web.Request) -> web.Response:
        base = self.base(request)
        return web.json_response({
            "issuer": base,
            "device_authorization_endpoint": f"{base}/oauth/device_authorization",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
        })

    async def protocol(self, request: web.Request) -> web.Response:
        text = resources.files("midway_identity").joinpath("protocol.md").read_text("utf-8")
        return web.Response(text=text.replace("{base}", self.base(request)),
                            content_type="text/markdown", charset="utf-8")

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM,
                                                actual_size=request.content_length)
        body = await request.content.read(MAX_FORM + 1)
        if len(body) > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=len(body))
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return {}
        return {k: v for k, v in pairs}

    async def device_authorization(self, request: web.Request) -> web.Response:
        if not self.device_limit.allow(request.remote or ""):
            return _oauth_error("slow_down", 429, "Too many sign-in attempts from your "
                                "network; wait a few minutes.")
        form = await self._form(request)
        device_code, user_code = await self.store.new_device(
            self.config.device_code_seconds, form.get("surface"))
        base = self.base(request)
        return web.json_response({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": f"{base}/device",
            "verification_uri_complete": f"{base}/device?user_code={user_code}",
            "expires_in": int(self.config.device_code_seconds),
            "interval": self.config.poll_interval,
        }, headers=NO_STORE)

    async def token(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        grant = form.get("grant_type", "")
        if grant == DEVICE_GRANT:
            code = form.get("device_code", "")
            if not code or len(code) > 128:
                return _oauth_error("invalid_request", description="device_code is missing")
            poll = await self.store.poll(code, self.config.poll_interval)
            if poll.status != "approved" or poll.session is None:
                return _oauth_error(poll.status, 429 if poll.status == "slow_down" else 400)
            return await self._tokens(poll.session)
        if grant == "refresh_token":
            return await self._refresh(form.get("refresh_token", ""))
        return _oauth_error("unsupported_grant_type",
                            description="grant_type must be the device code grant or "
                                        "refresh_token")

    async def _tokens(self, session: Session) -> web.Response:
        p = session.person
        access, expires_in = self.minter.mint(session.id, p.person_id, p.email, p.groups)
        refresh = await self.store.new_refresh(session.id)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": expires_in, "refresh_token": refresh}
        if p.email:
            body["email"] = p.email
        return web.json_response(body, headers=NO_STORE)

    async def _refresh(self, token: str) -> web.Response:
        if not token or len(token) > 128:
            return _oauth_error("invalid_grant", 401, "sign in again")
        status, session = await self.store.peek_refresh(token, REUSE_GRACE)
        if status == "unknown" or session is None:
            return _oauth_error("invalid_grant", 401, "sign in again")
        if status == "race":  # two refreshes of one client crossed: both get tokens
            if not session.active:
                return _oauth_error("invalid_grant", 401, "sign in again")
            return await self._tokens(session)
        if status == "used":
            await self.store.use_refresh(token)  # revokes the session: a copy is in use
            log.warning("identity: a refresh token of session %s was presented twice; the "
                        "session is revoked", session.id[:8])
            return _oauth_error("invalid_grant", 401, "sign in again")
        if not session.active:
            return _oauth_error("invalid_grant", 401, "this sign-in has ended; sign in again")
        groups = None
        idp_refresh = None
        recently = session.refreshed_at is not None and \
            time.time() - float(session.refreshed_at) < REUSE_GRACE
        if session.idp_refresh and not recently:  # (the IdP was asked seconds ago)
            held = self.sealer.open(session.idp_refresh)
            try:
                if held is None:  # sealed under another signing key: ask for a sign-in
                    raise IdPError("the IdP's refresh token cannot be read (signing_key "
                                   "changed?)")
                claims, fresh_idp = await self.idp.refresh(held)
                idp_refresh = self.sealer.seal(fresh_idp) if fresh_idp else None
            except IdPError as exc:
                if "ConnectError" in str(exc) or "Timeout" in str(exc):
                    return _oauth_error("temporarily_unavailable", 503,
                                        "the identity provider does not answer")
                await self.store.revoke([session.id], "the IdP refused the refresh")
                log.info("identity: the IdP refused to refresh session %s (%s): revoked",
                         session.id[:8], exc)
                return _oauth_error("invalid_grant", 401, "your identity provider ended "
                                    "this sign-in; sign in again")
            if claims is not None:
                groups = _groups(claims, self.config.groups_claim)
        outcome, spent = await self.store.use_refresh(token, REUSE_GRACE)
        if outcome == "race" and spent is not None and spent.active:
            return await self._tokens(spent)
        if outcome != "ok" or spent is None:
            return _oauth_error("invalid_grant", 401, "sign in again")
        await self.store.update_session(session.id, groups, idp_refresh)
        self._checked.pop(session.id, None)
        fresh = await self.store.session(session.id)
        assert fresh is not None
        return await self._tokens(fresh)

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: Claude Code's sign-out; always 200."""
        form = await self._form(request)
        token = form.get("token", "")
        sid = None
        if looks_like_jwt(token):
            try:
                sid = str(self.minter.verify(token)["jti"])
            except TokenError:
                sid = None
        elif token and len(token) <= 128:
            _, session = await self.store.peek_refresh(token)
            sid = session.id if session is not None else None
        if sid is not None:
            await self.store.revoke([sid], "signed out")
            self._checked.pop(sid, None)
        return web.Response(status=200, headers=NO_STORE)

    # -- the browser leg ----------------------------------------------------------------------

    def _secure(self, request: web.Request) -> bool:
        return self.base(request).startswith("https://")

    async def device_page(self, request: web.Request) -> web.Response:
        raw = request.query.get("user_code", "")
        if not raw:
            return pages.enter_code()
        if not self.verify_limit.allow(request.remote or ""):  # no guessing codes here either
            return pages.failed("Too many attempts from your network. Wait a few minutes "
                                "and try again.", 429)
        code = normalise_user_code(raw)
        if not code or not await self.store.pending_by_user_code(code):
            return pages.enter_code("That code was not recognised or has expired. Check "
                                    "your terminal and try again.", 400)
        endpoint = str(self.idp.app.server_metadata.get("authorization_endpoint") or
                       self.config.issuer)
        parts = urlsplit(endpoint)
        return pages.confirm_code(code, f"{parts.scheme}://{parts.netloc}")

    def _cross_site(self, request: web.Request) -> bool:
        """A form post another site made the browser send (CSRF): browsers say so in
        ``Sec-Fetch-Site``; older ones in ``Origin``, which is this gateway's when it names
        the host the request came to (``_named`` checked that name) or ``public_url``'s."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site not in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None:
            return False
        return urlsplit(origin).netloc not in (request.host, urlsplit(self.base(request)).netloc)

    async def device_submit(self, request: web.Request) -> web.Response:
        if not self.verify_limit.allow(request.remote or ""):
            return pages.failed("Too many attempts from your network. Wait a few minutes "
                                "and try again.", 429)
        if self._cross_site(request):
            return pages.failed("This request came from another site and was refused. Open "
                                "the link your terminal showed.", 403)
        form = await self._form(request)
        code = normalise_user_code(form.get("user_code", ""))
        if not code:
            return pages.enter_code("That code was not recognised.", 400)
        return await self._to_idp(request, code)

    async def _to_idp(self, request: web.Request, user_code: str) -> web.Response:
        if self.idp_problem:
            try:
                await self.idp.discover()
                self.idp_problem = None
            except IdPError:
                return pages.failed("The identity provider cannot be reached right now. "
                                    "Try again in a minute.", 503)
        try:
            auth = await self.idp.authorize_url(f"{self.base(request)}/oauth/callback")
        except IdPError:
            return pages.failed("The identity provider cannot be reached right now.", 503)
        browser = secrets.token_urlsafe(24)
        if not await self.store.start_browser(user_code, auth["state"], browser, auth["nonce"],
                                              auth["code_verifier"]):
            return pages.enter_code("That code was not recognised or has expired. Check "
                                    "your terminal and try again.", 400)
        response = web.HTTPFound(auth["url"], headers=pages.HEADERS)
        response.set_cookie(BROWSER_COOKIE, browser, max_age=int(
            self.config.device_code_seconds), path="/oauth/callback", httponly=True,
            samesite="Lax", secure=self._secure(request))
        raise response

    async def callback(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        leg = await self.store.browser_leg(state) if state and len(state) < 256 else None
        if leg is None or leg["status"] != "pending" or float(leg["expires_at"]) <= time.time():
            return pages.failed("This sign-in link has expired or was already used. Start "
                                "again from your terminal.")
        cookie = request.cookies.get(BROWSER_COOKIE, "")
        if not cookie or hashlib.sha256(cookie.encode()).hexdigest() != leg["browser_digest"]:
            return pages.failed("This sign-in was started in another browser. Open the "
                                "link on the device that showed the code.", 403)
        user_code = leg["user_code"]
        if "error" in request.query:
            await self.store.finish_device(user_code, None)
            return pages.failed(f"The identity provider said: "
                                f"{request.query.get('error', '')[:100]}.", 403)
        try:
            claims, idp_refresh = await self.idp.exchange(
                f"{self.base(request)}/oauth/callback", request.query.get("code", ""),
                leg["code_verifier"], leg["nonce"])
        except IdPError as exc:
            log.warning("identity: sign-in failed: %s", exc)
            await self.store.finish_device(user_code, None)
            return pages.failed("Sign-in could not be completed. Start again from your "
                                "terminal.", 502)
        person = self._person(claims)
        refusal = self._refusal(person, leg["surface"])
        if refusal:
            await self.store.finish_device(user_code, None)
            return pages.failed(refusal, 403)
        lifetime = self.config.session_seconds
        session = await self.store.create_session(
            person, leg["surface"], lifetime,
            self.sealer.seal(idp_refresh) if idp_refresh else None)
        if leg["surface"] == "dashboard":
            await self.store.finish_device(user_code, session.id)
            return await self._dashboard_session(request, person)
        await self.store.finish_device(user_code, session.id)
        log.info("identity: %s signed in (%s)", person.email or person.subject,
                 leg["surface"] or "device")
        response = pages.done(person.email or person.name or person.subject)
        response.del_cookie(BROWSER_COOKIE, path="/oauth/callback")
        return response

    def _person(self, claims: dict[str, Any]) -> Person:
        c = self.config
        subject = str(claims["sub"])
        email = claims.get(c.email_claim)
        name = claims.get(c.name_claim)
        return Person(person_id=person_id(self.config.issuer, subject),
                      issuer=self.config.issuer, subject=subject,
                      email=str(email) if isinstance(email, str) and email else None,
                      name=str(name) if isinstance(name, str) and name else None,
                      groups=_groups(claims, c.groups_claim))

    def _refusal(self, person: Person, surface: str | None) -> str:
        domains = self.config.allowed_email_domains
        if domains:
            email = (person.email or "").lower()
            if not any(email.endswith("@" + d.lower().lstrip("@")) for d in domains):
                return "This account may not sign in to this gateway."
        if surface == "dashboard" and not set(person.groups) & set(self.config.admin_groups):
            return "Your account is not in a group that may open the dashboard."
        return ""

    # -- the dashboard ------------------------------------------------------------------------

    async def dashboard_login(self, request: web.Request) -> web.Response:
        if not self.config.admin_groups:
            return pages.failed("Dashboard sign-in is not configured ([identity] "
                                "admin_groups).", 404)
        sessions = self._dashboard_sessions()
        if sessions is None:
            return pages.failed("The dashboard keeps no sessions here: set the admin key "
                                "([midway] admin_key).", 404)
        _, user_code = await self.store.new_device(self.config.device_code_seconds,
                                                   "dashboard")
        return await self._to_idp(request, user_code)

    def _dashboard_sessions(self) -> Any:
        if "dashboard" not in self.midway.services:
            return None
        from midway_dashboard import DASHBOARD
        dashboard = self.midway.services.get(DASHBOARD)
        return getattr(getattr(dashboard, "access", None), "sessions", None)

    async def _dashboard_session(self, request: web.Request, person: Person
                                 ) -> web.Response:
        from midway_dashboard.access import COOKIE, COOKIE_PATH
        sessions = self._dashboard_sessions()
        if sessions is None:
            return pages.failed("The dashboard is not running here.", 404)
        token = await sessions.create()
        log.info("identity: %s signed in to the dashboard", person.email or person.subject)
        response = web.HTTPSeeOther("/_midway/")
        response.set_cookie(COOKIE, token, max_age=int(sessions.lifetime), path=COOKIE_PATH,
                            httponly=True, samesite="Lax", secure=self._secure(request))
        response.del_cookie(BROWSER_COOKIE, path="/oauth/callback")
        raise response

    # -- managed settings ---------------------------------------------------------------------

    async def managed_settings(self, request: web.Request) -> web.Response:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(401, "sign in with /login first",
                                  headers={"x-should-retry": "false"})
        try:
            await self.session_of(token.strip())
        except MidwayError as exc:
            return error_response(exc.status, exc.message, headers=exc.headers)
        settings = self.config.managed_settings
        if not settings:
            return error_response(404, "no managed settings on this gateway")
        checksum = settings_checksum(settings)
        etag = f'"{checksum}"'
        asked = request.headers.get("if-none-match")
        if asked is not None and asked.strip() != "*" and \
                checksum in [t.strip().strip('"').removeprefix("W/").strip('"')
                             for t in asked.split(",")]:
            return web.Response(status=304, headers={"etag": etag})
        body = {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.minter.issuer}#{checksum}")),
                "checksum": checksum, "settings": settings}
        return web.json_response(body, headers={"etag": etag})


def _signin_again(why: str) -> MidwayError:
    return MidwayError(401, f"this sign-in is {why}: run /login in Claude Code to sign in "
                       "again", "authentication_error", headers={"x-should-retry": "false"})


IDENTITY: ServiceKey[Identity] = ServiceKey("identity")

