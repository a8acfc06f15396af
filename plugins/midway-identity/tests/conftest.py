"""A real OIDC provider (oidc-provider-mock: authlib's server components behind Flask, on a
thread) and midway with the identity plugin in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from oidc_provider_mock import run_server_in_thread
from signin import MODELS, PEOPLE, Seen, identity_config

import midway_identity
from midway.testing import RunningMidway


def pytest_configure(config: pytest.Config) -> None:
    # the test IdP (oidc-provider-mock) calls authlib APIs authlib has deprecated
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:authlib.*")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:oidc_provider_mock.*")


@pytest.fixture(scope="session")
def idp() -> Iterator[str]:
    """The issuer URL of a running OIDC provider knowing PEOPLE."""
    with run_server_in_thread(port=0, user_claims=PEOPLE) as server:
        yield f"http://localhost:{server.server_port}"


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
