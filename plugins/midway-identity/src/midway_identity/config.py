"""The ``[identity]`` table (each key also settable as ``MIDWAY_IDENTITY__<KEY>``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs
import orjson

from midway.config import ConfigError
from midway.options import option, schema_name, secret, store_option
from midway.storage import StoreURL
from midway.timeparse import parse_duration


def _url(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError("expected a URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"expected an http(s):// URL, got {value[:80]!r}")
    return value.strip().rstrip("/")


def _group_models(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError('expected a table like { engineering = ["claude-*"] }')
    out: dict[str, tuple[str, ...]] = {}
    for group, globs in value.items():
        if isinstance(globs, str):
            globs = [globs]
        if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
            raise ValueError(f"group {group!r}: expected a list of model globs")
        out[str(group)] = tuple(globs)
    return out


def _settings_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of Claude Code settings (managed-settings.json keys)")
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from None
    return dict(value)


@attrs.frozen
class IdentityConfig:
    issuer: str = option(
        "", converter=_url,
        help="the company IdP's OIDC issuer URL (its /.well-known/openid-configuration is "
             "read at start-up); empty: sign-in is off and nothing changes")
    client_id: str = option("", help="midway's client id at the IdP")
    client_secret: str | None = option(
        None, converter=secret, secret=True,
        help="midway's client secret at the IdP (env:NAME / file:PATH); unset for a public "
             "client (PKCE only)")
    public_url: str = option(
        "", converter=_url,
        help="the URL developers and their browsers reach midway at (issuer of midway's "
             "tokens, base of the verification and callback URLs); empty: "
             "http://<host>:<port> of this server")
    scopes: tuple[str, ...] = option(
        ("openid", "email", "profile"), help="scopes asked of the IdP (openid is always added)")
    groups_claim: str = option(
        "groups", help="the ID token (or userinfo) claim holding the person's groups")
    email_claim: str = option("email", help="the claim holding the person's e-mail")
    name_claim: str = option("name", help="the claim holding the person's display name")
    token_seconds: float = option(
        3600.0, converter=parse_duration, gt=0,
        help="lifetime of midway's access tokens (1h): what bounds access after removal at "
             "the IdP when the IdP issues no refresh token")
    session_seconds: float = option(
        43200.0, converter=parse_duration, gt=0,
        help="longest a sign-in lasts through refreshes without a new browser sign-in (12h); "
             "refreshes also ask the IdP when it issued a refresh token")
    device_code_seconds: float = option(
        600.0, converter=parse_duration, gt=0, help="how long a /login code can be confirmed")
    poll_interval: int = option(5, gt=0, help="seconds between token polls a client is told")
    revocation_cache_seconds: float = option(
        2.0, converter=parse_duration, ge=0,
        help="how long a checked token's session is trusted without asking the store again: "
             "the delay before `midway sessions revoke` reaches every instance")
    group_models: dict[str, tuple[str, ...]] = option(
        attrs.Factory(dict), converter=_group_models,
        help='per-group model allowlists, e.g. { engineering = ["claude-*"], '
             'interns = ["claude-haiku-*"] }; a person gets the union of their groups\' '
             "globs; empty table: no per-group limit")
    default_models: tuple[str, ...] = option(
        (), help="models of a signed-in person in none of group_models' groups (empty: no "
                 "model at all, when group_models is set)")
    admin_groups: tuple[str, ...] = option(
        (), help="IdP groups whose members may sign in to the dashboard (/_midway/)")
    allowed_email_domains: tuple[str, ...] = option(
        (), help="only people whose e-mail ends with one of these domains may sign in "
                 "(empty: anyone the IdP signs in)")
    managed_settings: dict[str, Any] = option(
        attrs.Factory(dict), converter=_settings_table,
        help="Claude Code managed settings served at /managed/settings to signed-in "
             "developers (empty: 404, no managed policy)")
    signing_key: str | None = option(
        None, converter=secret, secret=True,
        help="secret (>= 32 characters, env:NAME / file:PATH) midway's tokens are signed "
             "with; instances behind one URL must share it; unset: a key kept in the data dir "
             "(0600)")
    store: StoreURL = store_option(
        "identity.db", help="where sign-ins, sessions and refresh tokens live (SQLite in the "
                            "data dir, or a postgresql:// URL shared by every instance)")
    schema: str | None = option(None, converter=schema_name,
                                help="PostgreSQL schema to use (created if missing)")

    def __attrs_post_init__(self) -> None:
        if self.issuer and not self.client_id:
            raise ConfigError("[identity] client_id: required with an issuer (the client id "
                              "registered for midway at the IdP)")
        if self.signing_key is not None and len(self.signing_key) < 32:
            raise ConfigError("[identity] signing_key must be at least 32 characters "
                              "(e.g. `openssl rand -hex 32`)")

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)
