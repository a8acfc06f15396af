"""The running instance, as plugins see it in ``startup``, ``shutdown`` and routes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from midway.config import Settings
from midway.datadir import prepare
from midway.plugins import PluginHost

if TYPE_CHECKING:
    from midway.metrics import Metrics

log = logging.getLogger("midway")


class Midway:
    """One running midway: settings, plugins, the upstream HTTP session, metrics.

    ``midway.config(name)`` gives a plugin its own TOML table; ``midway.data_dir`` is where
    embedded stores live; ``midway.services`` lets plugins find each other (e.g. the dashboard
    reads ``midway.services["audit"]``).
    """

    def __init__(self, settings: Settings, plugins: PluginHost, metrics: Metrics | None = None
                 ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        self.services: dict[str, Any] = {}
        self.worker_index = 0
        self.stream_bytes_kept = 0  # see keep_stream_bodies

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

    def config(self, name: str) -> dict[str, Any]:
        """A plugin's config table (``[name]`` in TOML, ``MIDWAY_NAME__KEY`` in the env)."""
        return self.settings.plugin_config(name)
