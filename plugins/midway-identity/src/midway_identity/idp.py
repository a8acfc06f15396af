"""The company's identity provider, spoken to through authlib: OIDC discovery, the
authorization-code flow with PKCE and a nonce, ID-token verification (signature against the
IdP's JWKS, issuer, audience, expiry, nonce), and refresh."""

from __future__ import annotations

from typing import Any

from authlib.integrations.base_client import BaseApp
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client

from midway_identity.config import IdentityConfig


class _App(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):  # type: ignore[misc]
    client_cls = AsyncOAuth2Client


class IdPError(Exception):
    """The IdP refused or could not be reached (the message says which, no secrets)."""


class IdP:
    def __init__(self, config: IdentityConfig) -> None:
        scopes = list(dict.fromkeys(["openid", *config.scopes]))
        self.issuer = config.issuer
        self.app = _App(
            framework=None, name="idp", client_id=config.client_id,
            client_secret=config.client_secret,
            server_metadata_url=f"{config.issuer}/.well-known/openid-configuration",
            client_kwargs={"scope": " ".join(scopes), "code_challenge_method": "S256",
                           "timeout": 10.0,
                           "token_endpoint_auth_method":
                               "client_secret_basic" if config.client_secret else "none"})

    async def discover(self) -> dict[str, Any]:
        """The IdP's discovery document, checked (:class:`IdPError` saying what is wrong)."""
        try:
            metadata: dict[str, Any] = await self.app.load_server_metadata()
        except Exception as exc:  # httpx errors, bad JSON, HTTP status
            raise IdPError(f"{self.issuer}/.well-known/openid-configuration: "
                           f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if metadata.get("issuer", "").rstrip("/") != self.issuer:
            self.app.server_metadata.clear()
            raise IdPError(f"{self.issuer}/.well-known/openid-configuration names issuer "
                           f"{str(metadata.get('issuer'))[:100]!r}, not {self.issuer!r}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not metadata.get(key):
                self.app.server_metadata.clear()
                raise IdPError(f"{self.issuer}/.well-known/openid-configuration has no {key}")
        return metadata

    async def authorize_url(self, redirect_uri: str) -> dict[str, Any]:
        """``{url, state, nonce, code_verifier}`` for the browser's trip to the IdP."""
        from authlib.common.security import generate_token

        await self.discover()
        nonce = generate_token(24)
        result: dict[str, Any] = await self.app.create_authorization_url(
            redirect_uri, nonce=nonce)
        result["nonce"] = nonce
        return result

    async def exchange(self, redirect_uri: str, code: str, code_verifier: str, nonce: str
                       ) -> tuple[dict[str, Any], str | None]:
        """The verified ID-token claims (merged with userinfo when the IdP has one) and the
        IdP's refresh token, if it issued one."""
        try:
            token = await self.app.fetch_access_token(
                redirect_uri=redirect_uri, code=code, code_verifier=code_verifier)
        except Exception as exc:
            raise IdPError(f"token exchange failed: {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from None
        if "id_token" not in token:
            raise IdPError("the IdP answered without an id_token (is the openid scope "
                           "allowed for this client?)")
        try:
            claims = await self.app.parse_id_token(token, nonce=nonce)
        except Exception as exc:  # joserfc: bad signature, issuer, audience, nonce, expiry
            raise IdPError(f"ID token rejected: {type(exc).__name__}: {str(exc)[:200]}"
                           ) from None
        out = dict(claims)
        out.update({k: v for k, v in (await self._userinfo(token)).items() if k not in out})
        return out, token.get("refresh_token")

    async def refresh(self, refresh_token: str) -> tuple[dict[str, Any] | None, str | None]:
        """Ask the IdP whether the person may go on: new ID-token claims (``None`` when it
        sends none) and the rotated refresh token. :class:`IdPError` when it says no."""
        metadata = await self.discover()
        try:
            async with self.app._get_oauth_client(**metadata) as client:
                token = await client.refresh_token(metadata["token_endpoint"],
                                                   refresh_token=refresh_token)
        except Exception as exc:
            raise IdPError(f"refresh refused: {type(exc).__name__}: {str(exc)[:200]}"
                           ) from None
        claims = None
        if token.get("id_token"):
            try:
                claims = dict(await self.app.parse_id_token(token, nonce=None))
            except Exception as exc:
                raise IdPError(f"refreshed ID token rejected: {type(exc).__name__}") from None
        return claims, token.get("refresh_token") or refresh_token

    async def _userinfo(self, token: dict[str, Any]) -> dict[str, Any]:
        metadata = await self.app.load_server_metadata()
        if not metadata.get("userinfo_endpoint"):
            return {}
        try:
            async with self.app._get_oauth_client(**metadata) as client:
                client.token = token
                resp = await client.get(metadata["userinfo_endpoint"])
                resp.raise_for_status()
                data = resp.json()
        except Exception:
            return {}
        return data if isinstance(data, dict) else {}
