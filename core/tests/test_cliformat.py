"""The shared output of commands: tables that fit 100 columns, JSON money as decimals."""

from __future__ import annotations

from decimal import Decimal

import orjson

from midway.cliformat import Column, Table, columns, money, scalar, to_json


def test_money_is_a_decimal_string_in_json() -> None:
    data = {"saved_usd": 0.00037 * 3, "limit_usd": 5, "cost_usd": "0.0020475",
            "price": Decimal("3.000"), "nested": [{"spent_usd": 1e-7}],
            "missing": None, "flag": True, "count": 3}
    assert orjson.loads(to_json(data)) == {
        "saved_usd": "0.00111", "limit_usd": "5", "cost_usd": "0.0020475", "price": "3",
        "nested": [{"spent_usd": "0.0000001"}], "missing": None, "flag": True, "count": 3}
    assert money(0.1 + 0.2) == "0.3" and money(Decimal("-0")) == "0"


def test_scalars_read_as_json() -> None:
    assert [scalar(v) for v in (None, True, False, 3, "text", {"a": 1})] == \
        ["null", "true", "false", "3", "text", '{"a":1}']


def test_a_wide_table_drops_optional_columns_then_cuts_others() -> None:
    rows = [{"id": "mw_" + "a" * 27, "model": "claude-sonnet-4-6", "note": "n" * 80,
             "extra": "x" * 20, "flag": None}]
    cols = [Column("ID", "id", shrink=False), Column("MODEL", "model", shrink=False),
            Column("NOTE", "note"), Column("EXTRA", "extra", drop=1),
            Column("FLAG", "flag")]
    text = Table(cols).render(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "EXTRA" not in lines[0]
    assert rows[0]["id"] in lines[1] and "claude-sonnet-4-6" in lines[1]
    assert "n…" in lines[1] and lines[1].endswith("-")
    wide = Table(cols, wide=True).render(rows).splitlines()
    assert "EXTRA" in wide[0] and "n" * 80 in wide[1]
    streamed = Table(cols)
    assert len(streamed.header()) <= 100 and len(streamed.line(rows[0])) <= 100


def test_plain_columns_right_align_numbers() -> None:
    text = Table(columns("team", "requests", "cost_usd")).render(
        [{"team": "a", "requests": 3, "cost_usd": "0.5"}, {"team": "bb", "requests": 12,
                                                           "cost_usd": "10"}])
    assert text.splitlines()[1] == "a            3       0.5"
