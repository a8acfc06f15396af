"""The access line: its text form is every field that is set, in order, escaped; under
``midway serve`` it is written in the log's own line format, buffered per loop iteration."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from midway import accesslog
from midway.cli import LOG_FORMAT
from midway.exchange import Exchange, Principal, Request, Timings, Upstream


def exchange(**changes: object) -> Exchange:
    ex = Exchange(id="mw_1", request=Request(
        method="POST", path="/v1/messages", query_string="", headers=CIMultiDict(),
        body=b'{"model":"asked\\r\\nFAKE: 1"}'),
        principal=Principal(id="key-01", name="k", kind="passthrough"), client_address="",
        timings=Timings(started_at=time.time(), started=time.monotonic()), midway=None)
    for name, value in changes.items():
        if name in ("ttfb_ms", "total_ms"):
            setattr(ex.timings, name, value)
        else:
            setattr(ex, name, value)
    return ex


CASES = [
    exchange(),  # nothing answered: the request's model, escaped
    exchange(status=200, upstream_request_id="req_1", response_model="claude-x",
             upstream=Upstream(url="http://u", name="default"), ttfb_ms=1.0, total_ms=2.345),
    exchange(status=502, answered_by="cache", error="e\n" * 200, ttfb_ms=0.0),
]


def test_text_line_is_each_set_field_in_order() -> None:
    for ex in CASES:
        expected = " ".join(f"{k}={v}" for k, v in accesslog.fields(ex).items()
                            if v is not None)
        text = accesslog.line(ex, "text")
        assert text == expected
        assert text.isprintable()
    assert "model=asked\\r\\nFAKE: 1" in accesslog.line(CASES[0], "text")
    assert "model=claude-x" in accesslog.line(CASES[1], "text")


values = st.one_of(st.none(), st.text(max_size=12), st.text(min_size=150, max_size=260),
                  st.sampled_from(["a\nb", "\x00", "\u2028", "é" * 201, "x" * 200]))


@settings(max_examples=300, deadline=None)
@given(urid=values, team=values, model=values, answered_by=values, error=values,
       upstream=values, principal=st.text(max_size=210), path=st.text(max_size=210))
def test_the_text_line_is_the_fields_whatever_their_values(
        urid: str | None, team: str | None, model: str | None, answered_by: str | None,
        error: str | None, upstream: str | None, principal: str, path: str) -> None:
    # (the line checks its values together, then one by one only when that fails)
    ex = exchange(status=200, upstream_request_id=urid, response_model=model,
                  answered_by=answered_by, error=error, ttfb_ms=1.0, total_ms=2.5,
                  upstream=None if upstream is None else Upstream(url="http://u",
                                                                  name=upstream))
    ex.principal = Principal(id=principal, name="k", kind="passthrough", team=team)
    ex.request.path = path
    expected = " ".join(f"{k}={v}" for k, v in accesslog.fields(ex).items() if v is not None)
    assert accesslog.line(ex, "text") == expected


def test_direct_lines_have_the_log_format_and_are_written_together_later() -> None:
    stream = io.StringIO()
    direct = accesslog._Direct(stream, delay=0)  # the timer's delay: 0 runs it next step
    reference = logging.Formatter(LOG_FORMAT).format(logging.LogRecord(
        "midway.access", logging.INFO, __file__, 1, "x", None, None))

    async def serve() -> tuple[str, str]:
        direct.add("one")
        direct.add("two")
        before = stream.getvalue()  # nothing yet: both go out in one write, when the timer runs
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return before, stream.getvalue()

    before, after = asyncio.run(serve())
    assert before == ""
    assert direct.timer is None
    lines = after.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["one", "two"]
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO midway\.access: ")
    assert shape.match(reference) and all(shape.match(line) for line in lines)


def test_direct_lines_go_out_when_the_buffer_is_full_or_on_flush() -> None:
    stream = io.StringIO()
    direct = accesslog._Direct(stream, delay=3600, limit=3)

    async def serve() -> list[str]:
        seen = []
        for name in ("a", "b", "c", "d"):
            direct.add(name)
            seen.append(stream.getvalue().count("\n"))
        accesslog._direct, saved = direct, accesslog._direct
        try:
            accesslog.flush()  # what midway serve does once drained
        finally:
            accesslog._direct = saved
        seen.append(stream.getvalue().count("\n"))
        return seen

    assert asyncio.run(serve()) == [0, 0, 3, 3, 4]
    assert direct.timer is None and not direct.pending


def test_ms_text_is_the_rounded_value_as_printed() -> None:
    for value in (1.0, 2.345, 1.2, 0.005, 0.015, 10.0, 123.456, 99.995, 1e-9, 12345.678):
        assert accesslog._ms_text(value) == str(round(value, 2))
