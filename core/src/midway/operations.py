"""Operator commands that look at a deployment rather than serve it: config check, db
upgrade, the status of a running instance's workers."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import attrs

from midway import preflight
from midway.builtins import NAMES as BUILTINS
from midway.config import ConfigError, Settings
from midway.context import Midway
from midway.model_list import ModelsConfig
from midway.secrets_ref import SecretError
from midway.server import build_midway, runtime_dir
from midway.storage import StoreURLError, describe


@attrs.define
class CheckResult:
    subject: str  # "core" or a plugin name
    problems: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _core_problems(settings: Settings) -> list[str]:
    problems = preflight.problems(settings) + preflight.warnings(settings)
    if settings.client_keys and not settings.upstream_api_key:
        problems.append("client keys are configured but [midway] upstream_api_key is not: "
                        "requests not routed by a plugin would reach the upstream without "
                        "credentials")
    try:
        settings.options("models", ModelsConfig)
    except ConfigError as exc:
        problems.extend(line for line in str(exc).splitlines() if line.strip())
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".midway-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        problems.append(f"data dir {settings.data_dir} is not writable: {exc.strerror}")
    return problems


async def _run_per_plugin(midway: Midway, hook: str) -> list[tuple[str, Any, BaseException | None]]:
    out: list[tuple[str, Any, BaseException | None]] = []
    for impl in midway.plugins.impls(hook):
        try:
            result = impl.function(*[midway for _ in impl.argnames])
            if asyncio.iscoroutine(result):
                result = await result
            out.append((impl.plugin, result, None))
        except Exception as exc:
            out.append((impl.plugin, None, exc))
    return out


def config_check(settings: Settings) -> list[CheckResult]:
    """Validate the config and connect to every store it names."""
    midway = build_midway(settings)
    results = [CheckResult("core", _core_problems(settings))]
    for info in midway.plugins.infos:
        if info.error:
            results.append(CheckResult(info.name, [f"failed to load: {info.error}"]))
    for plugin, found, exc in asyncio.run(_run_per_plugin(midway, "config_check")):
        if found is None and exc is None and plugin in BUILTINS:
            continue  # a built-in with nothing configured (keys without [keys] enabled)
        problems = [str(p) for p in (found or [])]
        if exc is not None:
            problems += in_words(exc)
        results.append(CheckResult(plugin, problems))
    return results


def in_words(exc: BaseException) -> list[str]:
    """The problems an exception stands for, as a person reads them: a config error's lines
    (one per problem), an unset credential, or what went wrong — never a class name."""
    if isinstance(exc, ConfigError | SecretError | StoreURLError):
        return [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, ImportError):
        return [f"a module it needs is not installed ({exc.name or exc}); install the "
                "plugin's extras"]
    if isinstance(exc, TimeoutError):
        return ["timed out"]
    if isinstance(exc, OSError):
        return [describe(exc)]
    return [f"failed: {describe(exc)}"]


def db_upgrade(settings: Settings) -> list[tuple[str, list[str]]]:
    """Create or migrate every plugin's schemas; raises on the first failure."""
    midway = build_midway(settings)
    done = []
    for plugin, changes, exc in asyncio.run(_run_per_plugin(midway, "db_upgrade")):
        if exc is not None:
            raise RuntimeError(f"{plugin}: {'; '.join(in_words(exc))}") from exc
        if changes is None and plugin in BUILTINS:
            continue
        done.append((plugin, [str(c) for c in (changes or [])]))
    return done


def worker_status(settings: Settings) -> dict[str, Any]:
    """What the workers of the instance on ``settings.port`` last published."""
    workers = []
    directory = runtime_dir(settings)
    for path in sorted(Path(directory).glob("worker-*.json")) if directory.is_dir() else []:
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        alive = _alive(int(snap.get("pid", 0)))
        requests = sum(row[-1] for row in snap["requests"])
        errors = sum(row[-1] for row in snap["requests"] if str(row[0]) >= "500")
        workers.append({"worker": snap["worker"], "pid": snap["pid"], "alive": alive,
                        "requests": requests, "server_errors": errors,
                        "inflight": snap["inflight"], "open_streams": snap["open_streams"]})
    totals = {key: sum(w[key] for w in workers)
              for key in ("requests", "server_errors", "inflight", "open_streams")}
    return {"port": settings.port, "workers": workers, "totals": totals}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
