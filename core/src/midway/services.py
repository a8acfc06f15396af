"""Typed service keys: how plugins publish their per-instance state and find each other's.

A plugin that offers something to others (the dashboard reads billing, cache, router, audit)
exports a key next to the class it publishes::

    BILLING: ServiceKey[Billing] = ServiceKey("billing")

    midway.services[BILLING] = billing          # in startup
    billing = midway.services.get(BILLING)      # Billing | None, for mypy too

A key is the service's name (a ``str``), so ``midway.services["billing"]`` still finds it:
plugins that look services up by name keep working, and a lookup costs one dict access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

T = TypeVar("T")
D = TypeVar("D")


class ServiceKey(str, Generic[T]):
    """The name a service is published under, typed with the class of what it holds."""

    __slots__ = ()


class Services(dict[str, Any]):
    """``midway.services``: a dict of name → service whose :class:`ServiceKey` lookups are
    typed. At run time it is a plain dict (no per-lookup cost)."""

    if TYPE_CHECKING:
        @overload  # type: ignore[override]
        def get(self, key: ServiceKey[T], /) -> T | None: ...
        @overload
        def get(self, key: ServiceKey[T], default: D, /) -> T | D: ...
        @overload
        def get(self, key: str, /) -> Any: ...
        @overload
        def get(self, key: str, default: Any, /) -> Any: ...
        def get(self, key: str, default: Any = None, /) -> Any: ...

        @overload  # type: ignore[override]
        def pop(self, key: ServiceKey[T], default: D, /) -> T | D: ...
        @overload
        def pop(self, key: str, default: Any = ..., /) -> Any: ...
        def pop(self, key: str, default: Any = None, /) -> Any: ...

        @overload  # type: ignore[override]
        def __getitem__(self, key: ServiceKey[T], /) -> T: ...
        @overload
        def __getitem__(self, key: str, /) -> Any: ...
        def __getitem__(self, key: str, /) -> Any: ...

        @overload  # type: ignore[override]
        def __setitem__(self, key: ServiceKey[T], value: T, /) -> None: ...
        @overload
        def __setitem__(self, key: str, value: Any, /) -> None: ...
        def __setitem__(self, key: str, value: Any, /) -> None: ...
