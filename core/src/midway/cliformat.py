"""What commands print: tables that fit 100 columns and JSON with money as decimal strings.

Every command that prints rows uses :class:`Table` (``--wide`` from :func:`wide_option` turns
truncation off) and every ``--json`` uses :func:`to_json`, so all plugins' output reads alike.

* Money is a decimal string in JSON (``"0.00111"``, never ``0.0011099999999999999``): any
  value under a key ending in ``_usd`` and every :class:`~decimal.Decimal`.
* A cell shows ``-`` for a missing value, ``yes``/``no`` for booleans, and a value cut to its
  column's width ends in ``…``.
* A table too wide for 100 columns first leaves out its optional columns (``drop``, lowest
  first), then narrows the widest column that may be cut (``shrink``); identifiers a person
  copies into another command (request ids, model names) are never cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs
import click
import orjson

WIDTH = 100
MIN_COLUMN = 5
MONEY_DIGITS = 12  # picodollars: the finest unit midway prices in


def money(value: Any) -> str:
    """A dollar amount as a plain decimal string, without float noise or exponent."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        value = round(Decimal(repr(value)), MONEY_DIGITS)
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text


def _jsonable(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, key) for v in value]
    if key.endswith("_usd") and isinstance(value, int | float | Decimal) and \
            not isinstance(value, bool):
        return money(value)
    if isinstance(value, Decimal):
        return money(value)
    return value


def to_json(data: Any, *, indent: bool = True) -> str:
    """``data`` as JSON: money as decimal strings, ``null``/``true``/``false`` as JSON has
    them."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(_jsonable(data), option=option | orjson.OPT_NON_STR_KEYS,
                        default=str).decode()


def scalar(value: Any) -> str:
    """One value for a person reading ``key: value`` lines: strings as they are, everything
    else as JSON writes it (``null``, ``true``, ``[1, 2]``)."""
    if isinstance(value, str):
        return value
    return to_json(value, indent=False)


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, dict | list):
        return to_json(value, indent=False)
    return str(value)


@attrs.frozen
class Column:
    """``key`` reads a row's value (a name, or a function of the row); ``size`` is the width
    used when lines are printed one at a time (``audit tail``); ``drop`` > 0 makes the column
    optional (left out first when the table is too wide, lowest first); ``shrink`` allows
    cutting its values."""

    header: str
    key: str | Callable[[Mapping[str, Any]], Any]
    size: int = 12
    right: bool = False
    format: Callable[[Any], str] = cell
    drop: int = 0
    shrink: bool = True

    def text(self, row: Mapping[str, Any]) -> str:
        value = self.key(row) if callable(self.key) else row.get(self.key)
        return self.format(value).replace("\n", " ")


def columns(*names: str, optional: Sequence[str] = (), keep: Sequence[str] = ()
            ) -> list[Column]:
    """Plain columns named as their keys; ``*_usd`` and counts right-aligned. ``optional``
    ones are left out (first named, first) when the table is too wide; ``keep`` ones are
    never cut."""
    return [Column(name, name, right=name.endswith(("_usd", "_tokens", "requests")),
                   drop=optional.index(name) + 1 if name in optional else 0,
                   shrink=name not in keep)
            for name in names]


def _total(widths: Sequence[int | None]) -> int:
    shown = [w for w in widths if w is not None]
    return sum(shown) + 2 * (len(shown) - 1)


def fit(natural: Sequence[int], cols: Sequence[Column], width: int = WIDTH
        ) -> list[int | None]:
    """Each column's width, or ``None`` where it is left out, to fit ``width`` (two spaces
    between columns) where possible."""
    widths: list[int | None] = list(natural)
    for i in sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: cols[i].drop):
        if _total(widths) <= width:
            break
        widths[i] = None
    floor = [min(n, max(MIN_COLUMN, min(len(c.header), 8))) for n, c in zip(natural, cols,
                                                                            strict=True)]
    while _total(widths) > width:
        cuttable = [i for i, w in enumerate(widths)
                    if w is not None and cols[i].shrink and w > floor[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i] or 0)
        widths[widest] = (widths[widest] or 0) - 1
    return widths


def _cut(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[:max(width - 1, 0)] + "…"
    return text.rjust(width) if right else text.ljust(width)


@attrs.frozen
class Table:
    columns: Sequence[Column]
    wide: bool = False
    width: int = WIDTH

    def _line(self, cells: Iterable[str], widths: Sequence[int | None]) -> str:
        return "  ".join(_cut(c, w, col.right) for c, w, col in
                         zip(cells, widths, self.columns, strict=True)
                         if w is not None).rstrip()

    def _fitted(self, natural: list[int]) -> list[int | None]:
        return list(natural) if self.wide else fit(natural, self.columns, self.width)

    def render(self, rows: Iterable[Mapping[str, Any]]) -> str:
        """Header and rows, each column as wide as its content, narrowed to fit."""
        cells = [[c.text(row) for c in self.columns] for row in rows]
        natural = [max([len(c.header), *(len(r[i]) for r in cells)])
                   for i, c in enumerate(self.columns)]
        widths = self._fitted(natural)
        lines = [self._line([c.header for c in self.columns], widths)]
        lines += [self._line(r, widths) for r in cells]
        return "\n".join(lines)

    def header(self) -> str:
        """For rows printed as they come: the header at the columns' ``size``."""
        return self._line([c.header for c in self.columns], self._stream_widths())

    def line(self, row: Mapping[str, Any]) -> str:
        return self._line([c.text(row) for c in self.columns], self._stream_widths())

    def _stream_widths(self) -> list[int | None]:
        return self._fitted([max(c.size, len(c.header)) for c in self.columns])


def wide_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--wide``: print tables at their full width instead of fitting 100 columns."""
    return click.option("--wide", is_flag=True,
                        help=f"Do not fit tables to {WIDTH} columns (no truncation).")(fn)
