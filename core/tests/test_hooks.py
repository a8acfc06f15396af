"""The hook contract: ordering, first-result semantics with async, failures, retries."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

import midway
from midway import ErrorKind, MidwayError, Response, Retry, Upstream, hookimpl
from midway.plugins import PluginHost, module_plugin
from midway.sharedtimer import SharedTimer
from midway.testing import Reply, call_hook, make_exchange, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
MSG = {"model": "claude-sonnet-4-6", "max_tokens": 32,
       "messages": [{"role": "user", "content": "hi"}]}


def send(url: str, body: object = MSG, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/messages", data=orjson.dumps(body),
                headers=headers or {"x-api-key": "sk-ant-k1"}) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()
    return asyncio.run(go())


def test_async_first_result_wins_and_later_implementations_do_not_run(
        fake_upstream, midway_factory):
    calls: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        async def pre_request(self, exchange):
            calls.append("first")
            await asyncio.sleep(0)
            return None

    class Answers:
        @hookimpl
        async def pre_request(self, exchange):
            calls.append("answers")
            return Response(status=200, body={"type": "message", "content": [],
                                              "usage": {"input_tokens": 1, "output_tokens": 2}},
                            headers={"x-answered": "yes"})

    class Never:
        @hookimpl(trylast=True)
        def pre_request(self, exchange):
            calls.append("never")

    seen = []
    proxy = midway_factory(plugins=[("first", First()), ("answers", Answers()),
                                    ("never", Never()),
                                    module_plugin("cap", post_response=lambda exchange:
                                                  seen.append(exchange))])
    status, headers, _ = send(proxy.url)
    assert status == 200 and headers["x-answered"] == "yes"
    assert calls == ["first", "answers"]
    assert fake_upstream.requests == []
    wait_for(lambda: len(seen) == 1)
    assert seen[0].answered_by == "answers"
    assert seen[0].usage.output_tokens == 2


def test_pre_request_changes_headers_and_body(fake_upstream, midway_factory):
    def pre_request(exchange):
        exchange.request.headers["x-team"] = "search"
        body = exchange.request.json
        body["max_tokens"] = 7
        exchange.request.json = body

    proxy = midway_factory(plugins=[module_plugin("edit", pre_request=pre_request)])
    assert send(proxy.url)[0] == 200
    seen = fake_upstream.messages_requests[-1]
    assert seen.headers["x-team"] == "search"
    assert seen.json["max_tokens"] == 7


@pytest.mark.parametrize("hook", ["pre_request", "choose_upstream", "upstream_request",
                                  "upstream_response"])
def test_failing_request_hook_is_a_clear_500(fake_upstream, midway_factory, hook):
    def boom(exchange):
        raise RuntimeError("secret detail sk-ant-should-not-leak")

    seen: list[midway.Exchange] = []
    proxy = midway_factory(plugins=[module_plugin("broken", **{hook: boom}), module_plugin(
        "cap", post_response=lambda exchange: seen.append(exchange))])
    status, _, body = send(proxy.url)
    assert status == 500
    error = orjson.loads(body)["error"]
    assert error["type"] == "api_error"
    assert "broken" in error["message"] and hook in error["message"]
    assert b"sk-ant" not in body
    if hook in ("pre_request", "choose_upstream", "upstream_request"):
        assert fake_upstream.messages_requests == []
    assert proxy.midway.plugins.errors[("broken", hook)] == 1
    wait_for(lambda: len(seen) == 1)
    assert seen[0].error_kind is ErrorKind.PLUGIN_FAILED


def test_failing_observers_never_break_a_stream(fake_upstream, midway_factory):
    def boom(exchange, event=None):
        raise ValueError("observer bug")

    flaky = module_plugin("flaky", on_chunk=boom, post_response=boom,
                          pre_request=lambda exchange: exchange.observe_stream(flaky))
    proxy = midway_factory(plugins=[flaky])
    status, _, body = send(proxy.url, {**MSG, "stream": True})
    assert status == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')
    errors = proxy.midway.plugins.errors
    assert errors[("flaky", "on_chunk")] >= 5
    wait_for(lambda: errors[("flaky", "post_response")] == 1)

    async def metrics() -> str:
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/metrics") as r:
            return await r.text()
    text = asyncio.run(metrics())
    assert ('midway_plugin_errors_total{hook="post_response",plugin="flaky",worker="0"} 1.0'
            in text)


def test_retry_and_choose_upstream_sequence(fake_upstream, midway_factory):
    judged: list[int | None] = []

    def choose_upstream(exchange):
        return Upstream(url=fake_upstream.url, name=f"try{len(exchange.attempts) + 1}",
                        headers={"x-api-key": f"pool-key-{len(exchange.attempts) + 1}"},
                        passthrough_auth=False)

    def upstream_response(exchange, attempt):
        judged.append(attempt.status)
        if attempt.status == 529:
            return Retry(delay=0)
        return None

    seen = []
    proxy = midway_factory(plugins=[module_plugin(
        "pool", choose_upstream=choose_upstream, upstream_response=upstream_response,
        post_response=lambda exchange: seen.append(exchange))])
    fake_upstream.reply(Reply(status=529, error_type="overloaded_error"), Reply())
    status, _, _ = send(proxy.url)
    assert status == 200
    assert judged == [529, 200]
    assert [r.headers["x-api-key"] for r in fake_upstream.messages_requests] == [
        "pool-key-1", "pool-key-2"]
    wait_for(lambda: len(seen) == 1)
    assert [(a.number, a.status, a.retried) for a in seen[0].attempts] == [
        (1, 529, True), (2, 200, False)]
    assert seen[0].upstream.name == "try2"
    assert seen[0].attempts[0].id.endswith(".1")


def test_midway_error_from_a_hook_is_the_answer(fake_upstream, midway_factory):
    def choose_upstream(exchange):
        raise MidwayError(429, "every pooled key is resting", headers={"retry-after": "12"})

    seen: list[midway.Exchange] = []
    proxy = midway_factory(plugins=[module_plugin(
        "pool", choose_upstream=choose_upstream,
        post_response=lambda exchange: seen.append(exchange))])
    status, headers, body = send(proxy.url)
    assert status == 429 and headers["retry-after"] == "12"
    assert orjson.loads(body)["error"] == {"type": "rate_limit_error",
                                           "message": "every pooled key is resting"}
    wait_for(lambda: len(seen) == 1)
    assert seen[0].error_kind is ErrorKind.REFUSED
    assert seen[0].error == "every pooled key is resting"


def test_call_hook_and_make_exchange_for_unit_tests():
    plugin = module_plugin("tag", pre_request=lambda exchange: exchange.request.headers.update(
        {"x-team": "search"}))
    exchange = make_exchange()
    assert call_hook(plugin, "pre_request", exchange=exchange) is None
    assert exchange.request.headers["x-team"] == "search"
    assert exchange.model == "claude-sonnet-4-6"

    async def answer(exchange):
        return Response(status=204)
    assert call_hook(module_plugin("a", pre_request=answer), "pre_request",
                     exchange=exchange).status == 204


def test_plugin_loading_reports_broken_plugins(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("from midway import hookimpl\n@hookimpl\ndef post_response(exchange):\n"
                    "    pass\n")
    bad = tmp_path / "bad.py"
    bad.write_text("import does_not_exist_anywhere\n")
    host = PluginHost()
    host.load(only=[], extra=[str(good), str(bad), "midway_no_such_module"])
    infos = {i.name: i for i in host.infos}
    assert infos["good"].hooks == ["post_response"] and infos["good"].error is None
    assert infos["bad"].error == "cannot import 'does_not_exist_anywhere'"  # words, no class
    assert infos["midway_no_such_module"].error


def test_plugin_order_is_fixed_by_names_and_then_the_order_given(tmp_path, monkeypatch):
    (tmp_path / "order_plugins.py").write_text(
        "from midway.plugins import module_plugin\n"
        "zeta, alpha, mid, zeta_copy = (module_plugin(n, pre_request=lambda exchange: None)\n"
        "                               for n in ('zeta', 'alpha', 'mid', 'zeta_copy'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # Installed plugins as importlib might list them (its order follows sys.path and the file
    # system), one name twice as when a distribution is on sys.path twice.
    installed = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, f"order_plugins:{attr}", "midway")
        for name, attr in (("zeta", "zeta"), ("alpha", "alpha"), ("mid", "mid"),
                           ("zeta", "zeta_copy")))
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: installed if group == "midway" else ())
    local = tmp_path / "local.py"
    local.write_text("from midway import hookimpl\n@hookimpl\ndef pre_request(exchange):\n"
                     "    return None\n")
    host = PluginHost()
    host.load(extra=[str(local)], objects=[("embedded", module_plugin(
        "embedded", pre_request=lambda exchange: None))])
    assert [i.name for i in host.infos] == ["keys", "client_keys", "alpha", "mid", "zeta", "local",
                                            "embedded"]
    assert host.pm.get_plugin("zeta").__name__ == "zeta"  # the first listed of a name wins
    # Among equal priorities the plugin registered last runs first (midway.hookspecs "Order").
    assert [i.plugin for i in host.impls("pre_request")] == [
        "embedded", "local", "zeta", "mid", "alpha"]


def test_design_ten_line_plugin_works_as_written(fake_upstream, midway_factory, tmp_path,
                                                 capfd):
    # The example from docs/writing-plugins.md (and DESIGN.md), extracted and run as a file.
    text = (DOCS / "writing-plugins.md").read_text()
    code = re.search(r"```python\n(# team_tag.py.*?)```", text, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 11
    path = tmp_path / "team_tag.py"
    path.write_text(code)
    proxy = midway_factory(extra_plugins=[str(path)])
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-test", max_retries=0)
    client.messages.create(**MSG)
    assert fake_upstream.messages_requests[-1].headers["x-team"] == "search"
    # Read the capture once post_response is over (the exchange is recorded after it):
    # print() writes its pieces one by one, and a capture read between them can lose one.
    metrics = proxy.midway.metrics
    wait_for(lambda: sum(metrics.requests.values()) >= 1, timeout=5)
    sys.stdout.flush()
    model, output_tokens, status = capfd.readouterr().out.split()[-3:]
    assert (model, status) == ("claude-sonnet-4-6", "200") and int(output_tokens) > 0
    infos = {i.name: i for i in proxy.midway.plugins.infos}
    assert infos["team_tag"].hooks == ["post_response", "pre_request"]


def test_public_api_names():
    for name in ("hookimpl", "Exchange", "Response", "Upstream", "Retry", "SSEEvent",
                 "MidwayError", "Usage", "Principal"):
        assert hasattr(midway, name)


@pytest.mark.parametrize("hook", ["pre_request", "choose_upstream", "upstream_request",
                                  "upstream_response", "on_chunk", "post_response"])
def test_hanging_async_hook_is_cut_by_the_hook_timeout(fake_upstream, midway_factory, hook):
    async def hang(exchange):
        await asyncio.Event().wait()

    hooks: dict[str, Any] = {hook: hang}
    if hook == "on_chunk":
        hooks["pre_request"] = lambda exchange: exchange.observe_stream(stuck)
    stuck = module_plugin("stuck", **hooks)
    proxy = midway_factory(plugins=[stuck], hook_timeout=0.3)
    status, _, body = send(proxy.url, {**MSG, "stream": True})
    if hook in ("on_chunk", "post_response"):
        # Observers: the relay goes on, unchanged.
        assert status == 200 and b"message_stop" in body
    else:
        assert status == 500
        assert "stuck" in orjson.loads(body)["error"]["message"]
    errors = proxy.midway.plugins.errors
    wait_for(lambda: errors[("stuck", hook)] >= 1)


def test_five_line_pyproject_ships_the_plugin(tmp_path):
    import subprocess
    import sys
    import zipfile

    text = (DOCS / "writing-plugins.md").read_text()
    code = re.search(r"```python\n(# team_tag.py.*?)```", text, flags=re.S).group(1)
    pyproject = re.search(r"```toml\n(.*?)```", text, flags=re.S).group(1)
    assert len(pyproject.strip().splitlines()) <= 6
    (tmp_path / "team_tag.py").write_text(code)
    (tmp_path / "pyproject.toml").write_text(pyproject)
    import shutil
    uv = shutil.which("uv")  # nox's venvs have uv beside them, not pip
    command = [uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(tmp_path)] if uv \
        else [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
              str(tmp_path / "dist"), str(tmp_path)]
    subprocess.run(command, check=True)
    wheel = next((tmp_path / "dist").glob("midway_team_tag-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "team_tag.py" in names
    assert "[midway]" in entry_points and "team_tag = team_tag" in entry_points


def test_a_released_parse_keeps_the_small_top_level_values():
    long_system = "s" * 1000
    body = {"model": "claude-sonnet-4-6", "max_tokens": 32, "stream": True,
            "temperature": 0.5, "metadata": None, "system": long_system,
            "messages": [{"role": "user", "content": "hi"}]}
    exchange = make_exchange(body=body)
    request = exchange.request
    assert request.json["messages"][0]["content"] == "hi" and request.parsed
    request.release()
    assert request.parsed and request._json is midway.exchange._UNSET
    assert (exchange.model, exchange.stream_requested) == ("claude-sonnet-4-6", True)
    assert [request.field(k) for k in ("max_tokens", "temperature", "metadata", "speed")] \
        == [32, 0.5, None, None]
    assert request._json is midway.exchange._UNSET  # none of that parsed the body again
    # what was not kept (a list, a long string) is read by a second parse, as json is
    assert request.field("system") == long_system
    assert request.json["messages"] == body["messages"]


def test_a_changed_body_is_serialised_before_its_parse_is_released():
    exchange = make_exchange(body={"model": "a", "max_tokens": 1, "messages": []})
    exchange.request.json = {**exchange.request.json, "model": "b"}
    exchange.request.release()
    assert orjson.loads(exchange.request.body)["model"] == "b"
    assert exchange.model == "b" and not exchange.request.changed
    exchange.request.body = b"not json"
    assert not exchange.request.parsed and exchange.model is None
    exchange.request.release()  # nothing parsed: nothing to let go
    assert exchange.request.field("model") is None


def test_after_the_request_went_upstream_its_parse_is_let_go(fake_upstream, midway_factory):
    seen: list[tuple[bool, str | None, Any, Any]] = []

    def pre_request(exchange):
        exchange.request.json  # a plugin parses it (billing asks for the model)

    def post_response(exchange):
        request = exchange.request
        held = request._json is not midway.exchange._UNSET
        seen.append((held, exchange.model, request.field("max_tokens"),
                     request.json["messages"]))  # json still works: parsed again

    proxy = midway_factory(plugins=[module_plugin("p", pre_request=pre_request,
                                                  post_response=post_response)])
    assert send(proxy.url)[0] == 200
    wait_for(lambda: seen)
    assert seen == [(False, "claude-sonnet-4-6", 32, MSG["messages"])]


def test_hook_waits_share_one_timer_and_each_is_cut_at_its_deadline():
    """The hook timeout costs no timer for an implementation that never waits, and one for all
    that wait (armed at the earliest deadline, left armed when that wait ends: not one per
    wait); each wait is still cut at its own deadline, counted from its call (time it spent
    before waiting too), and a wait cut leaves the others running."""
    import time

    host = PluginHost()
    host.hook_timeout = 0.4
    armed: list[float] = []

    async def quick() -> str:
        return "done"

    async def waits(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "waited"

    async def busy_then_waits() -> str:
        time.sleep(0.45)  # past the deadline before its first wait
        await asyncio.sleep(0.01)
        return "late"

    async def fails() -> None:
        raise KeyError("x")

    async def swallows_its_cut() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "kept"  # as under asyncio.timeout: returned, the cancellation taken back
        return "slept"

    async def begins_later() -> str:
        await asyncio.sleep(0.2)
        return await host.bounded(waits(0.3))  # still waiting when the first is cut

    async def go() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(getattr(callback, "__self__", None), SharedTimer):  # the waits'
                armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting  # type: ignore[method-assign]
        assert await host.bounded(quick()) == "done"
        with pytest.raises(KeyError):
            await host.bounded(fails())
        assert armed == []
        assert await host.bounded(waits(0.01)) == "waited"
        assert len(armed) == 1
        assert await host.bounded(waits(0.01)) == "waited"
        assert len(armed) == 1  # the first wait's timer, still armed, serves this one too
        with pytest.raises(TimeoutError):
            await host.bounded(waits(5))
        with pytest.raises(TimeoutError):
            await host.bounded(busy_then_waits())
        assert await host.bounded(swallows_its_cut()) == "kept"
        first = asyncio.ensure_future(host.bounded(waits(5)))
        second = asyncio.ensure_future(begins_later())
        cut, waited = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(cut, TimeoutError) and waited == "waited"
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    asyncio.run(go())


def test_cancelling_a_request_reaches_the_hook_it_waits_in():
    host = PluginHost()
    host.hook_timeout = 30.0
    seen: list[str] = []

    async def hook() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            seen.append("ended")

    async def go() -> None:
        task = asyncio.ensure_future(host.bounded(hook()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert seen == ["ended"]
