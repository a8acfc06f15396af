"""The running instance, as plugins see it in ``startup``, ``shutdown`` and routes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from midway.config import Settings
from midway.datadir import prepare
from midway.plugins import PluginHost
from midway.services import Services

if TYPE_CHECKING:
    from midway.metrics import Metrics

log = logging.getLogger("midway")
T = TypeVar("T")


class Midway:
    """One running midway: settings, plugins, the upstream HTTP session, metrics.

    ``midway.options(name, Config)`` gives a plugin its declared table; ``midway.data_dir`` is
    where embedded stores live; ``midway.services`` holds each plugin's per-instance state under
    a typed :class:`~midway.services.ServiceKey`, which is also how plugins find each other
    (the dashboard reads ``midway.services.get(AUDIT)``). See docs/writing-plugins.md.
    """

    def __init__(self, settings: Settings, plugins: PluginHost, metrics: Metrics | None = None
                 ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.metrics = metrics
        # Read once: the property scans the environment, and every request asks it.
        self.key_mode = settings.client_keys_enabled
        self.session: aiohttp.ClientSession | None = None
        self.services = Services()
        self.worker_index = 0
        self.stream_bytes_kept = 0  # see keep_stream_bodies
        self.started = False  # every startup hook ran (``/readyz``)
        self.draining = False  # SIGTERM received: finishing, taking no new work (``/readyz``)

    def keep_stream_bodies(self, limit: int) -> None:
        """Keep up to ``limit`` bytes of every streamed answer in ``exchange.stream_body``.

        Call it in ``startup``. The largest limit asked for wins. Cheaper than ``on_chunk`` for
        a plugin that needs the whole answer only at ``post_response``: no event is parsed for
        it, the relay only keeps a reference to each chunk it writes.
        """
        self.stream_bytes_kept = max(self.stream_bytes_kept, int(limit))

    @property
    def data_dir(self) -> Path:
        return prepare(self.settings.data_dir)

    def options(self, name: str, cls: type[T]) -> T:
        """A plugin's declared config table (:mod:`midway.options`), built and checked: the
        ``[name]`` table overridden by ``MIDWAY_<NAME>__<KEY>``, store paths under the data
        dir. Raises :class:`midway.config.ConfigError` naming the file, table and key."""
        return self.settings.options(name, cls, self.data_dir)

    def config(self, name: str) -> dict[str, Any]:
        """A plugin's config table as a loose dict (``[name]`` in TOML, ``MIDWAY_NAME__KEY``
        in the env), for plugins that do not declare theirs yet; prefer :meth:`options`."""
        return self.settings.plugin_config(name)
