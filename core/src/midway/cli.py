"""The ``midway`` command line. Plugins add subcommands through ``register_commands``."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from midway import __version__, accesslog
from midway.cliformat import to_json
from midway.config import ConfigError, Settings, load_settings
from midway.datadir import prepare, private_files
from midway.identity import identity_key, passthrough_id
from midway.keys.cli import make_keys_group
from midway.plugins import PluginFailed, PluginHost
from midway.storage import StoreMissing, StoreUnavailable, stores_created
from midway.storage.retry import describe, is_transient
from midway.timeparse import TIME_FORMS, parse_time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format=LOG_FORMAT, stream=sys.stderr)
    root = logging.getLogger()
    handler = root.handlers[0] if len(root.handlers) == 1 else None
    if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr and \
            handler.formatter is not None and handler.formatter._fmt == LOG_FORMAT and \
            not accesslog.log.handlers and accesslog.log.propagate:
        # Logging is ours alone: access lines take the short way to the same stream.
        accesslog.direct(sys.stderr)


# click.ParamType is generic from click 8.2 on; midway supports 8.1.
class TimeParam(click.ParamType):  # type: ignore[type-arg]
    """A ``--since`` / ``--until`` option: :func:`midway.timeparse.parse_time` → unix seconds
    (ISO date or date-time, naive = UTC; unix seconds; ``15m`` / ``2h`` / ``7d`` ago)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float | None:
        try:
            return parse_time(value)
        except ConfigError:
            self.fail(f"{value!r} is not a time: use {TIME_FORMS}", param, ctx)


TIME = TimeParam()


def settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command ``--config`` and ``--data-dir`` and pass it ``settings``.

    Options given on the root (``midway --data-dir D audit query``) apply too; the
    command's own win. Every command that reads a store should use this: it never creates a
    store (:func:`midway.storage.stores_created`); where none exists the command fails with
    one line saying so. A command that must create one (``keys create``, ``db upgrade``)
    opens it within ``stores_created(True)``.
    """

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="TOML config file (or MIDWAY_CONFIG).")
    @click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                  help="Where embedded stores live (or MIDWAY_DATA_DIR).")
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: str | None, data_dir: str | None,
                **kwargs: Any) -> Any:
        root = click.get_current_context().find_root().params
        try:
            settings = load_settings(config_path or root.get("config_path"),
                                     data_dir=data_dir or root.get("data_dir"))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            with stores_created(False):
                return fn(*args, settings=settings, **kwargs)
        except (StoreMissing, StoreUnavailable) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            if not is_transient(exc):
                raise
            # a database that is down or not reachable from here: what a person can act on
            raise click.ClickException(
                f"{fn.__name__.replace('_', ' ')}: a store could not be reached "
                f"({describe(exc)}); check that its database is running and reachable at the "
                "address in the config, then run the command again") from None

    return wrapper


def _plugin_host(settings: Settings | None = None) -> PluginHost:
    """The plugins ``settings`` select; without settings, those of the root's ``--config`` /
    ``--data-dir`` (a bad config then loads every installed plugin: commands report it)."""
    host = PluginHost()
    if settings is None:
        ctx = click.get_current_context(silent=True)
        root = ctx.find_root().params if ctx is not None else {}
        try:
            settings = load_settings(root.get("config_path"), data_dir=root.get("data_dir"))
        except ConfigError:
            settings = Settings()
    logging.getLogger("midway.plugins").setLevel(logging.CRITICAL)  # reported by `plugins`
    host.load(only=settings.plugins, extra=settings.extra_plugins)
    return host


class MidwayCLI(click.Group):
    """Adds plugin subcommands the first time the command list is needed."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            _plugin_host().call_sync("register_commands", cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load()
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(cls=MidwayCLI)
@click.version_option(__version__, prog_name="midway")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (or MIDWAY_CONFIG).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where embedded stores live (or MIDWAY_DATA_DIR).")
def cli(config_path: str | None, data_dir: str | None) -> None:
    """midway: a plugin-based proxy for the Anthropic Messages API."""
    private_files()  # stores any command creates are the owner's only (0600, dirs 0700)


@cli.command()
@click.option("--host", default=None, help="Address to bind [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [8910].")
@click.option("--upstream", default=None, help="Anthropic API base URL.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (or MIDWAY_CONFIG).")
@click.option("--plugin", "plugins", multiple=True,
              help="Extra plugin: a .py file or an importable module (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where embedded stores live (or MIDWAY_DATA_DIR).")
@click.option("--workers", type=int, default=None, help="Processes sharing the port [1].")
@click.option("--allow-public", is_flag=True, default=None,
              help="Listen beyond loopback even without client keys (not recommended).")
def serve(host: str | None, port: int | None, upstream: str | None, config_path: str | None,
          plugins: tuple[str, ...], data_dir: str | None, workers: int | None,
          allow_public: bool | None) -> None:
    """Run the proxy."""
    from midway import preflight
    from midway.server import check_exposure, run

    root = click.get_current_context().find_root().params
    try:
        settings = load_settings(config_path or root.get("config_path"), host=host, port=port,
                                 upstream=upstream, extra_plugins=plugins,
                                 data_dir=data_dir or root.get("data_dir"), workers=workers,
                                 allow_public=allow_public)
        check_exposure(settings)
        preflight.check(settings)
        _setup_logging(settings)
        for warning in preflight.warnings(settings):
            logging.getLogger("midway").warning("%s", warning)
        prepare(settings.data_dir)
        identity_key(settings)  # created here, before any worker: a bad one fails now
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        run(settings)
    except ConfigError as exc:  # a plugin's table, found bad at start-up
        raise click.ClickException(str(exc)) from None
    except PluginFailed as exc:
        cause = exc.__cause__
        if exc.hook != "startup" or cause is None or not is_transient(cause):
            raise  # a bug: its traceback is what helps
        # a plugin that reached its store or service on its own (not through storage.reach)
        raise click.ClickException(
            f"{exc}: something it uses could not be reached ({describe(cause)}); check that "
            f"it is running and reachable at the address in [{exc.plugin}]") from None


@cli.command("claude", add_help_option=False, context_settings={
    "ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def claude_command(args: tuple[str, ...]) -> None:
    """Run Claude Code through midway: start midway in the background if none is running on
    the configured port, then run `claude ARGS` pointed at it. midway's own options go before
    the command: `midway --config X claude -p "hi"`. `midway stop` stops the background
    instance."""
    from midway import launcher

    root = click.get_current_context().find_root().params
    try:
        settings = load_settings(root.get("config_path"), data_dir=root.get("data_dir"))
        launcher.launch(settings, list(args))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("stop")
@settings_options
def stop_command(settings: Settings) -> None:
    """Stop the background midway that `midway claude` started (never another process)."""
    from midway import launcher

    try:
        click.echo(launcher.stop(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("principal")
@click.argument("credential")
@settings_options
def principal_command(settings: Settings, credential: str) -> None:
    """The principal id of a pass-through credential (a reference: env:NAME, file:PATH or
    the key), as budgets and reports name it on this install."""
    from midway.secrets_ref import SecretError, resolve

    try:
        click.echo(passthrough_id(resolve(credential), identity_key(settings)))
    except (SecretError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@settings_options
def plugins_command(settings: Settings, as_json: bool) -> None:
    """List the plugins the config selects: name, version, source, hooks, load error."""
    host = _plugin_host(settings)
    infos = [info.as_dict() for info in host.infos]
    if as_json:
        click.echo(to_json(infos))
        return
    if not infos:
        click.echo("no plugins installed")
    for info in infos:
        line = f"{info['name']} {info['version'] or '-'} ({info['source']})"
        if info["error"]:
            line += f"  FAILED: {info['error']}"
        else:
            line += f"  hooks: {', '.join(info['hooks']) or '-'}"
        click.echo(line)


@cli.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8911, show_default=True)
def mock_upstream(host: str, port: int) -> None:
    """Run a fake Anthropic API (for demos and offline machines)."""
    from midway.fake_upstream import run_forever

    click.echo(f"fake Anthropic API on http://{host}:{port}", err=True)
    run_forever(host, port)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@settings_options
def config_show(settings: Settings) -> None:
    """Print the settings in force: core and every plugin table (credentials masked)."""
    from midway.configview import settings_view

    click.echo(to_json(settings_view(settings)))


cli.add_command(make_keys_group(settings_options))


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@settings_options
def config_check_command(settings: Settings, as_json: bool) -> None:
    """Validate the config and connect to every store it names."""
    from midway.operations import config_check

    results = config_check(settings)
    if as_json:
        click.echo(to_json([{"subject": r.subject, "ok": r.ok, "problems": r.problems}
                            for r in results]))
    else:
        for result in results:
            click.echo(f"{result.subject}: {'ok' if result.ok else 'PROBLEMS'}")
            for problem in result.problems:
                click.echo(f"  - {problem}")
    if not all(r.ok for r in results):
        sys.exit(1)


@cli.group("db")
def db_group() -> None:
    """Schemas of the stores plugins use."""


@db_group.command("upgrade")
@settings_options
def db_upgrade_command(settings: Settings) -> None:
    """Create or migrate every plugin's schemas."""
    from midway.operations import db_upgrade

    try:
        with stores_created(True):
            done = db_upgrade(settings)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    for plugin, changes in done:
        click.echo(f"{plugin}: {'; '.join(changes) if changes else 'up to date'}")


@cli.command("status")
@click.option("--port", type=int, default=None, help="Port of the instance [8910].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def status_command(settings: Settings, port: int | None, as_json: bool) -> None:
    """Per-worker and total figures of a running instance on this machine."""
    from midway.operations import worker_status

    if port is not None:
        settings.port = port
    status = worker_status(settings)
    if as_json:
        click.echo(to_json(status))
        return
    if not status["workers"]:
        click.echo(f"no running midway found on port {settings.port} "
                   f"(data dir {settings.data_dir})")
        sys.exit(1)
    for w in status["workers"]:
        click.echo(f"worker {w['worker']} pid {w['pid']}{'' if w['alive'] else ' (gone)'}: "
                   f"{w['requests']} requests, {w['server_errors']} 5xx, "
                   f"{w['inflight']} in flight, {w['open_streams']} open streams")
    t = status["totals"]
    click.echo(f"total: {t['requests']} requests, {t['server_errors']} 5xx, "
               f"{t['inflight']} in flight, {t['open_streams']} open streams")


def main() -> None:
    cli(prog_name="midway")


if __name__ == "__main__":
    main()
