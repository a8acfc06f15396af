"""A fake Google Cloud: an OAuth2 token endpoint that verifies the service-account JWT
google-auth posts to it (its signature, with the test key's public half; its audience, issuer
and scope) and issues access tokens, and a Vertex AI endpoint that serves Claude's rawPredict
/ streamRawPredict / count-tokens only to a bearer of a token it issued and still valid."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import attrs
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from multidict import CIMultiDict

from midway.fake_upstream import FakeAnthropic, RecordedRequest, estimate_tokens
from midway.testing import ServerThread

PATH = re.compile(r"/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/"
                  r"anthropic/models/(?P<model>[^/:]+):(?P<method>rawPredict|streamRawPredict)")
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The audience Google's token endpoint requires in the assertion (wherever it is posted).
AUDIENCE = "https://oauth2.googleapis.com/token"


def service_account(token_uri: str, project: str = "fake-project") -> tuple[dict[str, Any], str]:
    """A fresh service account key file's JSON (as a dict) and its public key (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    email = f"midway-test@{project}.iam.gserviceaccount.com"
    return {"type": "service_account", "project_id": project,
            "private_key_id": secrets.token_hex(20), "private_key": private,
            "client_email": email, "client_id": "1234567890", "token_uri": token_uri}, public


@attrs.define
class Recorded:
    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]


class FakeGoogle(ServerThread):
    def __init__(self) -> None:
        self.public_key: str | None = None  # set by the test: the key the JWTs must verify with
        self.email: str | None = None
        self.lifetime = 3600  # seconds each issued token lasts
        self.issued: dict[str, float] = {}  # token → expiry (epoch seconds)
        self.grants_refused = 0
        self.requests: list[Recorded] = []
        self.errors: list[tuple[int, dict[str, Any]]] = []  # queued Google-format errors
        self.anthropic = FakeAnthropic()
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/{tail:v1/.*}", self._predict)
        super().__init__(app)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:  # google-auth's own verification: signature, expiry, audience
            claims = jwt.decode(str(form.get("assertion")), certs=self.public_key,
                                audience=AUDIENCE)
        except ValueError as exc:
            self.grants_refused += 1
            return web.json_response({"error": "invalid_grant",
                                      "error_description": str(exc)}, status=400)
        if claims.get("iss") != self.email or SCOPE not in str(claims.get("scope", "")):
            self.grants_refused += 1
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = f"ya29.fake-{secrets.token_urlsafe(16)}"
        self.issued[token] = time.time() + self.lifetime
        return web.json_response({"access_token": token, "expires_in": self.lifetime,
                                  "token_type": "Bearer"})

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and self.issued.get(token, 0) > time.time()

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        match = PATH.fullmatch(request.raw_path)
        if match is None:
            return _google_error(404, "NOT_FOUND", f"no such method: {request.raw_path}")
        if not self._authorised(request):
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                 "credentials. Expected OAuth 2 access token.")
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests.append(Recorded(request.raw_path, CIMultiDict(request.headers), body))
        if self.errors:
            status, error = self.errors.pop(0)
            return web.json_response({"error": error}, status=status)
        if not isinstance(body.get("anthropic_version"), str):
            return _google_error(400, "INVALID_ARGUMENT", "anthropic_version: field required")
        if match["model"] == "count-tokens":
            return web.json_response({"input_tokens": estimate_tokens(raw)})
        if "model" in body:
            return _google_error(400, "INVALID_ARGUMENT", "model: Extra inputs are not "
                                 "permitted")
        # Claude behind Vertex answers as Anthropic does: the Anthropic fake renders it.
        anthropic_body = {**body, "model": match["model"]}
        anthropic_body.pop("anthropic_version")
        if match["method"] == "streamRawPredict":
            anthropic_body["stream"] = True
        rec = RecordedRequest(method="POST", path="/v1/messages", query="",
                              headers=CIMultiDict(request.headers),
                              body=orjson.dumps(anthropic_body), received_at=time.monotonic())
        rendered = self.anthropic.render(rec)
        if rendered.events is None:
            return rendered.response()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in rendered.events:
            await response.write(event)
        await response.write_eof()
        return response


def _google_error(status: int, name: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": name}},
                             status=status)
