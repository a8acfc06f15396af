"""The price catalogue file in the data dir: fetched and checked before it is installed
(``midway billing prices update``), and watched by running instances, which swap to a new
catalogue without a restart and keep the one they have when the file is not valid."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path

import aiohttp

from midway_billing.pricing import Catalogue, PriceError

log = logging.getLogger("midway.billing")

MAX_BYTES = 1 << 20  # a catalogue is a few KB; anything near this is not one
FETCH_TIMEOUT = 30.0


def catalogue_path(prices_file: str, data_dir: Path) -> Path:
    path = Path(prices_file).expanduser()
    return path if path.is_absolute() else data_dir / path


def read(path: Path) -> Catalogue | None:
    """The catalogue installed at ``path``, or None if there is none.

    :raises PriceError: it is there but not a valid catalogue.
    """
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceError(f"{path}: cannot read it: {exc}") from None
    return Catalogue.parse(text, str(path))


async def _download(url: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(url) as response:
            if response.status != 200:
                raise PriceError(f"{url}: HTTP {response.status}")
            return await response.content.read(MAX_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PriceError(f"{url}: cannot fetch it: {exc or type(exc).__name__}") from None


def fetch(source: str) -> str:
    """The text of a catalogue at ``source``: an http(s) URL or a file path (for the CLI:
    runs its own event loop for a URL)."""
    if source.startswith(("http://", "https://")):
        body = asyncio.run(_download(source))
    else:
        try:
            with open(Path(source).expanduser(), "rb") as file:
                body = file.read(MAX_BYTES + 1)
        except OSError as exc:
            raise PriceError(f"{source}: cannot read it: {exc.strerror or exc}") from None
    if len(body) > MAX_BYTES:
        raise PriceError(f"{source}: larger than {MAX_BYTES} bytes: not a price catalogue")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PriceError(f"{source}: not UTF-8 text") from None


def install(path: Path, catalogue: Catalogue) -> None:
    """Write ``catalogue`` to ``path`` atomically: a watcher never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(catalogue.text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


class Watch:
    """Notices a new catalogue file; each version of the file is read (and judged) once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def changed(self) -> Catalogue | None:
        """The file's catalogue if the file changed since last asked and is valid; a file
        that is not valid is logged, once, and the catalogue in force is kept."""
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        self._seen = stamp
        if stamp is None:
            log.warning("billing: %s was removed; the prices in force stay until a restart "
                        "(which goes back to the shipped catalogue)", self.path)
            return None
        try:
            return read(self.path)
        except PriceError as exc:
            log.error("billing: kept the prices in force: the new catalogue is not valid: %s",
                      exc)
            return None
