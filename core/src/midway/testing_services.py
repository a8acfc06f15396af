"""PostgreSQL and Redis for tests: the shared servers, and servers of a test's own.

Part of the ``midway.testing`` pytest plugin (which imports these fixtures), so every
package's tests can ask for them:

* ``postgres_dsn`` — the shared PostgreSQL (``MIDWAY_TEST_POSTGRES``, default
  ``postgresql://postgres@127.0.0.1:5432/test``);
* ``pg_schema`` — a fresh, empty schema on it, dropped after the test;
  ``pg_schema_factory(create=False)`` names more (created or not), all dropped after the test;
* ``redis_url`` — the shared Redis (``MIDWAY_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``); ``redis_prefix`` — a fresh key prefix on it, whose keys are
  deleted after the test;
* ``private_postgres`` / ``private_postgres_module`` — a :class:`PrivatePostgres` cluster of
  the test's (or module's) own, to stop, crash and restart;
* ``private_redis`` — a :class:`PrivateRedis` of the test's own, to kill and restart.

A shared server that cannot be reached fails the test with a message saying so: a missing
service never turns into skipped tests.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PrivatePostgres", "PrivateRedis", "free_port", "pg_query", "pg_schema",
           "pg_schema_factory", "postgres_dsn", "private_postgres", "private_postgres_module",
           "private_redis", "redis_prefix", "redis_url", "wait_for", "wait_listening"]

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    """A loopback port nothing listens on right now (for servers started as subprocesses)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on the loopback ``port``."""
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(listening, timeout=timeout)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
             ) -> None:
    """Poll until ``predicate()`` holds (for effects in another thread); fail after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# -- PostgreSQL ------------------------------------------------------------------------------

def pg_query(dsn: str, sql: str, *args: Any, schema: str | None = None) -> list[Any]:
    """Run one statement on ``dsn`` (with ``search_path`` set to ``schema``, if given) and
    return its rows. For synchronous test code: it runs its own event loop."""
    import asyncpg

    async def run() -> list[Any]:
        settings = {"search_path": schema} if schema else None
        conn = await asyncpg.connect(dsn, server_settings=settings)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The shared PostgreSQL server's DSN. Fails (never skips) when it cannot be reached."""
    dsn = os.environ.get("MIDWAY_TEST_POSTGRES", DEFAULT_POSTGRES)
    try:
        pg_query(dsn, "SELECT 1")
    except Exception as exc:
        pytest.fail(f"PostgreSQL for tests is unreachable at {dsn} ({exc!r}); start it or set "
                    "MIDWAY_TEST_POSTGRES", pytrace=False)
    return dsn


@pytest.fixture
def pg_schema_factory(postgres_dsn: str, request: pytest.FixtureRequest
                      ) -> Iterator[Callable[..., str]]:
    """``pg_schema_factory(create=True)`` → a unique schema name on the shared server, created
    (empty) unless ``create=False`` (for tests of a missing schema). Every name handed out is
    dropped, with what is in it, after the test."""
    names: list[str] = []
    # A schema named after its test tells whose leftovers an interrupted run left behind.
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:24]

    def factory(create: bool = True) -> str:
        name = f"t_{stem}_{secrets.token_hex(4)}"
        names.append(name)
        if create:
            pg_query(postgres_dsn, f'CREATE SCHEMA "{name}"')
        return name

    yield factory
    for name in names:
        pg_query(postgres_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_schema(pg_schema_factory: Callable[..., str]) -> str:
    """A fresh, empty schema on the shared PostgreSQL, dropped after the test."""
    return pg_schema_factory()


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are needed: none in "
                    "/usr/lib/postgresql/*/bin or on PATH", pytrace=False)
    return Path(pg_ctl).parent


class PrivatePostgres:
    """A PostgreSQL cluster of a test's own: ``initdb`` into a temporary directory, trust
    authentication, loopback on a free port that stays the same across restarts, so
    :attr:`dsn` stays valid. Under root the server runs as the ``postgres`` user (PostgreSQL
    refuses to run as root). Made by the ``private_postgres`` fixtures, which remove it."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # Not under pytest's tmp_path: the postgres user must be able to reach the directory.
        self.root = Path(tempfile.mkdtemp(prefix="midway-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = {"user": "postgres", "group": "postgres"}
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            # Speed over durability (a test's data need not survive the machine), sockets
            # only where this cluster lives.
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True,
                                cwd=self.root, timeout=120, **self._as_user)
        if result.returncode != 0:
            raise AssertionError(f"{tool} failed ({result.returncode}): "
                                 f"{result.stdout}{result.stderr}{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text()[-2000:]
        except OSError:
            return ""

    def _answers(self) -> bool:
        try:
            pg_query(self.dsn, "SELECT 1")
            return True
        except Exception:
            return False

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it accepts connections."""
        # -W: pg_ctl does not wait; readiness is a real connection, polled below.
        self._run("pg_ctl", "start", "-W", "-D", str(self.data), "-l", str(self.log))
        self.running = True
        try:
            wait_for(self._answers, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(f"private PostgreSQL on port {self.port} not answering "
                                 f"within {timeout} s{self._log_tail()}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected, clean shutdown) or ``immediate``
        (no shutdown checkpoint: as after a crash, recovery runs on the next start)."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"stop mode must be 'fast' or 'immediate', not {mode!r}")
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")
        self.running = False

    def restart(self) -> None:
        """A clean stop, then a start on the same port."""
        self.stop("fast")
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs, and delete the cluster."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running PostgreSQL cluster of this test's own (``.dsn``, ``.stop(mode)``,
    ``.start()``, ``.restart()``), stopped and deleted after the test."""
    yield from _private_postgres()


@pytest.fixture(scope="module")
def private_postgres_module() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster shared by a module's tests (initdb once per module);
    a test that stops it starts it again."""
    yield from _private_postgres()


# -- Redis -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis server's URL. Fails (never skips) when it cannot be reached."""
    import redis

    url = os.environ.get("MIDWAY_TEST_REDIS", DEFAULT_REDIS)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis for tests is unreachable at {url} ({exc!r}); start it or set "
                    "MIDWAY_TEST_REDIS", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix on the shared Redis; every key starting with it is deleted after
    the test."""
    import redis

    prefix = f"midway-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        names = list(client.scan_iter(match=f"{prefix}*"))
        if names:
            client.delete(*names)
    finally:
        client.close()


class PrivateRedis:
    """A ``redis-server`` of a test's own on a free loopback port (the same across
    restarts), without persistence: after :meth:`stop` and :meth:`start` it is empty."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed for this test and is not on PATH",
                        pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port),
                                      "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_for(self._answers, timeout=timeout, interval=0.05)

    def _answers(self) -> bool:
        import redis

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited "
                                 f"({self.proc.returncode})")
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL, as a crash would); its data is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running redis-server of this test's own (``.url``, ``.port``, ``.stop()``,
    ``.start()``), killed after the test."""
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()
