"""``/readyz`` follows every configured store: a real midway with audit, billing, cache and
keys on a PostgreSQL of the test's own, which is stopped and started again (issue #27)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from cluster import start_instances, stop_instances

from midway.testing import FakeUpstream
from midway.testing_services import PrivatePostgres, wait_for


def readyz(url: str) -> tuple[int, list[str]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())["problems"]
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())["problems"]


def test_readyz_is_503_while_postgresql_is_down_and_200_after(
        tmp_path: Path, private_postgres: PrivatePostgres, fake_upstream: FakeUpstream) -> None:
    # trust auth takes any password: this one must never show in /readyz
    dsn = private_postgres.dsn.replace("postgres@", "postgres:s3cret@")
    config = tmp_path / "midway.toml"
    config.write_text(f'''
[midway]
ready_timeout = 3
[audit]
store = "{dsn}"
[billing]
store = "{dsn}"
[cache]
store = "{dsn}"
[keys]
enabled = true
store = "{dsn}"
''')
    (instance,) = start_instances(config, fake_upstream.url, tmp_path,
                                  "audit,billing,cache", workers=(1,))
    try:
        assert readyz(instance.url) == (200, [])
        private_postgres.stop("immediate")
        status, problems = readyz(instance.url)
        assert status == 503
        failing = {p.split(":", 1)[0] for p in problems}
        assert {"audit", "billing", "cache", "keys"} <= failing, problems
        assert all("connection" in p or "no answer" in p or "closed" in p for p in problems), \
            problems
        assert not any("s3cret" in p for p in problems), problems
        assert instance.healthy()  # alive all the while: /livez and /healthz say so
        private_postgres.start()
        wait_for(lambda: readyz(instance.url)[0] == 200, timeout=30)
    finally:
        codes: list[Any] = stop_instances([instance])
    assert codes == [0]
