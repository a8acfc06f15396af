"""Shared fixtures and helpers for the key-store tests (imported by test_keys_*.py)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from click.testing import CliRunner

from midway.cli import cli

ADMIN_KEY = "adm-" + secrets.token_hex(16)


@pytest.fixture(params=["sqlite", "postgresql"])
def keys_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The ``[keys]`` table of a store on SQLite (in tmp) or PostgreSQL (a fresh schema)."""
    config: dict[str, Any] = {"enabled": True, "poll_interval": 0.1}
    if request.param == "postgresql":
        config.update(store=request.getfixturevalue("postgres_dsn"),
                      schema=request.getfixturevalue("pg_schema"))
    else:
        config.update(store=str(tmp_path / "keys.db"))
    return config


def write_config(tmp_path: Path, keys: dict[str, Any]) -> Path:
    lines = ["[keys]"]
    for name, value in keys.items():
        lines.append(f"{name} = {orjson.dumps(value).decode()}")
    path = tmp_path / "midway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(config: Path, *args: str) -> Any:
    """``midway --config CONFIG keys ARGS --json``: the parsed JSON it printed."""
    result = CliRunner().invoke(cli, ["--config", str(config), "keys", *args, "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def run_cli_failing(config: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(config), "keys", *args])
    assert result.exit_code != 0
    return result.output


def client(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def ask(url: str, key: str, model: str = "claude-sonnet-4-6") -> Any:
    return client(url, key).messages.create(model=model, max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])


class OpenAPIChecker:
    """Validates real responses against the admin API's OpenAPI 3.1 document."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import re

        from jsonschema import Draft202012Validator, FormatChecker
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.spec = spec
        self._registry = Registry().with_resource(
            "urn:midway-admin", Resource.from_contents(spec, default_specification=DRAFT202012))
        self._validator = Draft202012Validator
        self._formats = FormatChecker()
        self._paths = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p)
                       for p in spec["paths"]]
        self.checked: set[tuple[str, str, int]] = set()

    def _deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def check(self, method: str, path: str, status: int, body: bytes) -> Any:
        path = path.partition("?")[0]
        template = next((t for rx, t in self._paths if rx.match(path)), None)
        assert template is not None, f"{path} is not in the OpenAPI document"
        operation = self.spec["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {template} → {status} is not documented"
        response = self._deref(responses[str(status)])
        schema = response["content"]["application/json"]["schema"]
        data = orjson.loads(body)
        pointer = schema["$ref"].removeprefix("#") if "$ref" in schema else None
        root = {"$ref": f"urn:midway-admin#{pointer}"} if pointer else schema
        validator = self._validator(root, registry=self._registry,
                                    format_checker=self._formats)
        errors = sorted(validator.iter_errors(data), key=str)
        assert not errors, f"{method} {path} {status}: {errors[0].message}"
        self.checked.add((method.upper(), template, status))
        return data


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One plain HTTP request: ``(status, body)``, whatever the status."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
