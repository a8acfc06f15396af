"""A real OIDC provider (oidc-provider-mock: authlib's server components behind Flask, on a
thread) and midway with the identity plugin in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from oidc_provider_mock import User, run_server_in_thread

import midway_identity
from midway.exchange import Exchange
from midway.hookspecs import hookimpl
from midway.testing import RunningMidway

PEOPLE = [
    User(sub="alice", claims={"email": "alice@corp.example", "name": "Alice Liddell",
                              "groups": ["engineering", "midway-admins"]}),
    User(sub="ian", claims={"email": "ian@corp.example", "name": "Ian Intern",
                            "groups": ["interns"]}),
    User(sub="mallory", claims={"email": "mallory@elsewhere.example", "name": "Mallory",
                                "groups": []}),
]
GROUP_MODELS = {"engineering": ["claude-*"], "interns": ["claude-haiku-*", "claude-sonnet-*"]}
MODELS = [{"id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1"},
          {"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"},
          {"id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5"}]


def pytest_configure(config: pytest.Config) -> None:
    # the test IdP (oidc-provider-mock) calls authlib APIs authlib has deprecated
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:authlib.*")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:oidc_provider_mock.*")


@pytest.fixture(scope="session")
def idp() -> Iterator[str]:
    """The issuer URL of a running OIDC provider knowing PEOPLE."""
    with run_server_in_thread(port=0, user_claims=PEOPLE) as server:
        yield f"http://localhost:{server.server_port}"


class Seen:
    """Records who each finished request was (what the audit log would name)."""

    def __init__(self) -> None:
        self.principals: list[Any] = []

    @hookimpl
    def post_response(self, exchange: Exchange) -> None:
        self.principals.append(exchange.principal)


def identity_config(issuer: str, /, **extra: Any) -> dict[str, Any]:
    return {"issuer": extra.pop("issuer", issuer), "client_id": "midway-test",
            "client_secret": "s3cret-test",
            "poll_interval": 1, "group_models": GROUP_MODELS, "admin_groups": ["midway-admins"],
            "revocation_cache_seconds": 0, **extra}


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def gateway(midway_factory: Callable[..., RunningMidway], idp: str, seen: Seen
            ) -> Callable[..., RunningMidway]:
    def start(identity: dict[str, Any] | None = None, plugins: list[Any] | None = None,
              **overrides: Any) -> RunningMidway:
        config = {"identity": identity_config(idp, **(identity or {})),
                  "models": {"list": MODELS}}
        return midway_factory(plugins=[("identity", midway_identity), ("seen", seen),
                                       *(plugins or [])],
                              config=config, upstream_api_key="sk-ant-upstream-test",
                              **overrides)
    return start
