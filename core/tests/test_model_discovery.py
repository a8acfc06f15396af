"""Model discovery (``GET /v1/models``) and the connection-warming probe (``HEAD /api/hello``)
answered by midway itself: Anthropic's list format, the key's scope, pagination, and no
upstream call."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from midway.config import ConfigError
from midway.model_list import ModelsConfig
from midway.options import load_table
from midway.testing import FakeUpstream, Harness, RunningMidway

HAIKU_ONLY = "mw-haiku-only-key-0123456789"
EVERYTHING = "mw-everything-key-0123456789"
MODELS = {"list": [
    {"id": "claude-opus-4-8", "display_name": "Opus 4.8", "description": "deep work"},
    {"id": "claude-sonnet-4-6", "display_name": "Sonnet 4.6", "description": "daily driver"},
    {"id": "claude-haiku-4-5", "display_name": "Haiku 4.5", "description": "quick",
     "created_at": "2025-10-01T00:00:00Z"},
]}


def synchronous(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())
    return run


KEYS = [{"key": HAIKU_ONLY, "name": "hal", "models": ["claude-haiku-*"]},
        {"key": EVERYTHING, "name": "eve"}]


@synchronous
async def test_the_list_is_anthropic_s_format_from_config_and_goes_nowhere() -> None:
    async with Harness(config={"models": MODELS}) as h:
        result = await h.request(path="/v1/models?limit=1000", method="GET", body=b"")
    assert result.status == 200
    assert result.headers["content-type"] == "application/json"
    listed = result.json()
    assert [m["id"] for m in listed["data"]] == [
        "claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"]
    assert listed["data"][0] == {"type": "model", "id": "claude-opus-4-8",
                                 "display_name": "Opus 4.8", "description": "deep work",
                                 "created_at": "1970-01-01T00:00:00Z"}
    assert listed["data"][2]["created_at"] == "2025-10-01T00:00:00Z"
    assert (listed["has_more"], listed["first_id"], listed["last_id"]) == (
        False, "claude-opus-4-8", "claude-haiku-4-5")
    assert h.upstream.requests == []
    assert result.exchange.answered_by == "midway.models"


@synchronous
async def test_a_key_scoped_to_haiku_sees_only_haiku() -> None:
    async with Harness(config={"models": MODELS}, client_keys=KEYS) as h:
        hal = await h.request(path="/v1/models", method="GET", body=b"",
                              headers={"x-api-key": HAIKU_ONLY})
        eve = await h.request(path="/v1/models", method="GET", body=b"",
                              headers={"x-api-key": EVERYTHING})
        one = await h.request(path="/v1/models/claude-opus-4-8", method="GET", body=b"",
                              headers={"x-api-key": HAIKU_ONLY})
        mine = await h.request(path="/v1/models/claude-haiku-4-5", method="GET", body=b"",
                               headers={"x-api-key": HAIKU_ONLY})
        nobody = await h.request(path="/v1/models", method="GET", body=b"",
                                 headers={"x-api-key": "mw-not-a-key-00000000000"})
    assert [m["id"] for m in hal.json()["data"]] == ["claude-haiku-4-5"]
    assert len(eve.json()["data"]) == 3
    # Opus exists, but not for this key: the same 404 as a model that does not exist.
    assert one.status == 404 and one.json()["error"]["type"] == "not_found_error"
    assert mine.status == 200 and mine.json()["display_name"] == "Haiku 4.5"
    assert nobody.status == 401
    assert h.upstream.requests == []


@synchronous
async def test_without_any_credential_the_list_is_refused() -> None:
    async with Harness(config={"models": MODELS}) as h:
        result = await h.request(path="/v1/models", method="GET", body=b"",
                                 headers={"x-api-key": ""})
    assert result.status == 401
    assert result.json()["error"]["type"] == "authentication_error"
    assert h.upstream.requests == []


@synchronous
async def test_pages_follow_anthropic_s_after_and_before_ids() -> None:
    async with Harness(config={"models": MODELS}) as h:
        first = (await h.request(path="/v1/models?limit=2", method="GET", body=b"")).json()
        second = (await h.request(path=f"/v1/models?limit=2&after_id={first['last_id']}",
                                  method="GET", body=b"")).json()
        back = (await h.request(path="/v1/models?limit=1&before_id=claude-haiku-4-5",
                                method="GET", body=b"")).json()
        default = (await h.request(path="/v1/models", method="GET", body=b"")).json()
        bad = await h.request(path="/v1/models?limit=1001", method="GET", body=b"")
        both = await h.request(path="/v1/models?after_id=a&before_id=b", method="GET",
                               body=b"")
    assert [m["id"] for m in first["data"]] == ["claude-opus-4-8", "claude-sonnet-4-6"]
    assert first["has_more"] is True
    assert [m["id"] for m in second["data"]] == ["claude-haiku-4-5"]
    assert second["has_more"] is False
    assert [m["id"] for m in back["data"]] == ["claude-sonnet-4-6"] and back["has_more"]
    assert len(default["data"]) == 3  # Anthropic's default page is 20
    assert bad.status == 400 and "1 to 1000" in bad.json()["error"]["message"]
    assert both.status == 400


@synchronous
async def test_router_routes_by_name_are_listed_with_their_names() -> None:
    pytest.importorskip("midway_router")
    import midway_router

    router = {"upstreams": [{"name": "a", "url": "http://fake.invalid"}],
              "rules": [{"name": "fast", "match": {"model": ["claude-team-fast", "claude-x*"]},
                         "target": "a", "model": "claude-haiku-4-5",
                         "display_name": "Team fast", "description": "Haiku for the team"}]}
    async with Harness(plugins=[("router", midway_router)],
                       config={"router": router, "models": MODELS}) as h:
        listed = (await h.request(path="/v1/models", method="GET", body=b"")).json()
    ids = [m["id"] for m in listed["data"]]
    assert ids == ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5",
                   "claude-team-fast"]  # the glob is no model name: not listed
    assert listed["data"][3]["display_name"] == "Team fast"
    assert listed["data"][3]["description"] == "Haiku for the team"


@synchronous
async def test_upstream_discovery_forwards_and_auto_without_models_forwards() -> None:
    for config in ({"models": {**MODELS, "discovery": "upstream"}}, {}):
        async with Harness(config=config) as h:
            result = await h.request(path="/v1/models", method="GET", body=b"")
        assert [r.path for r in h.upstream.requests] == ["/v1/models"]
        assert result.exchange.answered_by is None


@synchronous
async def test_a_router_rename_alone_does_not_switch_discovery_to_midway() -> None:
    # A rule routing one model by name must not shrink what clients see to that one name.
    pytest.importorskip("midway_router")
    import midway_router

    router = {"upstreams": [{"name": "a", "url": "http://fake.invalid"}],
              "rules": [{"match": {"model": "claude-opus-4-7"}, "target": "a",
                         "model": "claude-sonnet-4-6"}]}
    async with Harness(plugins=[("router", midway_router)], config={"router": router}) as h:
        forwarded = await h.request(path="/v1/models", method="GET", body=b"")
    assert forwarded.exchange.answered_by is None
    assert [r.path for r in h.upstream.requests] == ["/v1/models"]


def test_a_toml_date_time_is_taken_as_created_at() -> None:
    import tomllib

    table = tomllib.loads('[[list]]\nid = "claude-a"\ncreated_at = 2026-02-17T09:30:00+01:00\n')
    [entry] = load_table(ModelsConfig, "models", table).list
    assert entry.created_at == "2026-02-17T08:30:00Z"


@pytest.mark.parametrize(("table", "expected"), [
    ({"list": [{"id": "claude a"}]}, "id must be a model name"),
    ({"list": [{"id": "claude-a", "name": "x"}]}, "unknown key(s) name"),
    ({"list": [{"id": "claude-a"}, {"id": "claude-a"}]}, "listed twice"),
    ({"list": [{"id": "claude-a", "created_at": "yesterday"}]}, "RFC 3339"),
    ({"discovery": "sometimes"}, "discovery"),
])
def test_configuration_mistakes_are_one_line(table: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_table(ModelsConfig, "models", table)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_over_http_the_list_and_hello_answer_fast_with_no_upstream_call(
        midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream) -> None:
    running = midway_factory(config={"models": MODELS})

    async def go() -> list[tuple[int, Any, float]]:
        out = []
        async with aiohttp.ClientSession() as session:
            for method, path in (("GET", "/v1/models?limit=1000"), ("HEAD", "/api/hello"),
                                 ("GET", "/api/hello")):
                started = time.monotonic()
                async with session.request(method, running.url + path,
                                           headers={"x-api-key": "sk-ant-x"},
                                           allow_redirects=False) as resp:
                    body = await resp.json() if path.startswith("/v1") else None
                    out.append((resp.status, body, time.monotonic() - started))
        return out

    (models, list_body, list_took), (hello, _, hello_took), (get_hello, _, _) = \
        asyncio.run(go())
    assert (models, hello, get_hello) == (200, 200, 200)
    assert len(list_body["data"]) == 3
    assert list_took < 3.0 and hello_took < 3.0  # Claude Code's budget for discovery is 3 s
    assert fake_upstream.requests == []
