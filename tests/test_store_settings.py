"""Every plugin resolves the same ``store`` value to the same place (issue #16): one grammar,
midway.storage.parse_store, read through each plugin's declared table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from midway.config import ConfigError
from midway.keys import KeysConfig
from midway.options import load_table
from midway_audit.config import AuditConfig
from midway_billing.config import BillingConfig
from midway_cache.config import CacheConfig

# (table name, declared class, the file "sqlite" and an unset store mean)
TABLES: list[tuple[str, type[Any], str]] = [
    ("audit", AuditConfig, "audit.db"),
    ("billing", BillingConfig, "billing.db"),
    ("cache", CacheConfig, "cache.db"),
    ("keys", KeysConfig, "keys.db"),
]
DSN = "postgresql://midway:s3cret@db.internal:5432/midway"


def resolve(name: str, cls: type[Any], value: Any, data_dir: Path,
            env: dict[str, str] | None = None) -> Any:
    table = {} if value is None else {"store": value}
    return load_table(cls, name, table, env=env, data_dir=data_dir).store


@pytest.mark.parametrize("value", [
    "shared.db", "sub/dir/shared.db", "/var/lib/midway/shared.db", "sqlite:///srv/shared.db",
    "~/shared.db", DSN, "postgres://midway@db.internal/midway", "env:MW_STORE",
    "file:dsn.txt",
])
def test_the_same_value_names_the_same_store_in_every_plugin(tmp_path: Path, value: str,
                                                             monkeypatch) -> None:
    monkeypatch.setenv("MW_STORE", DSN)
    (tmp_path / "dsn.txt").write_text(DSN + "\n")
    monkeypatch.chdir(tmp_path)  # file: paths are relative to the working directory
    places = {name: resolve(name, cls, value, tmp_path / "data") for name, cls, _ in TABLES}
    assert len(set(places.values())) == 1, places
    store = next(iter(places.values()))
    if store.kind == "sqlite":
        assert store.path.is_absolute()
        if not value.startswith(("/", "sqlite:", "~")):  # relative: inside the data dir
            assert store.path.is_relative_to(tmp_path / "data")
    else:
        assert store.url.startswith("postgres")


@pytest.mark.parametrize("value", [None, "", "sqlite"])
def test_sqlite_means_each_plugins_own_file_in_the_data_dir(tmp_path: Path, value: Any) -> None:
    for name, cls, default_file in TABLES:
        store = resolve(name, cls, value, tmp_path)
        assert store.kind == "sqlite"
        assert store.path == tmp_path / default_file  # never a file named "sqlite"


@pytest.mark.parametrize("value", ["postgresql:/missing-slashes", "mysql://h/db", "env:",
                                   "env:MW_UNSET_STORE", "redis:/h", "sqlite:/x.db", 42])
def test_a_bad_value_is_refused_alike_by_every_plugin(tmp_path: Path, value: Any) -> None:
    for name, cls, _ in TABLES:
        with pytest.raises(ConfigError) as caught:
            resolve(name, cls, value, tmp_path)
        assert f"[{name}] store" in str(caught.value)
        assert "s3cret" not in str(caught.value)


def test_env_override_of_the_store_is_read_the_same_way(tmp_path: Path) -> None:
    for name, cls, _ in TABLES:
        env = {f"MIDWAY_{name.upper()}__STORE": "shared.db"}
        assert resolve(name, cls, None, tmp_path, env) == resolve(
            "audit", AuditConfig, "shared.db", tmp_path)
