"""``midway config check`` and ``midway db upgrade`` for the billing ledger and budgets."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storage import check_store, upgrade_store
from midway_billing import catalogue_file
from midway_billing.config import LABEL, BillingConfig
from midway_billing.pricing import PriceError
from midway_billing.store import SCHEMA


def _config(midway: Midway) -> BillingConfig:
    # Prices, budgets and the store are validated here too: an invalid table raises, which the
    # core reports as this plugin's problem.
    return midway.settings.options("billing", BillingConfig)


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = _config(midway)
    problems = await check_store(config.store, SCHEMA, label=LABEL, pg_schema=config.schema)
    path = catalogue_file.catalogue_path(config.prices_file, midway.settings.data_dir)
    try:  # the installed catalogue, checked with the config's overrides over it
        installed = catalogue_file.read(path)
        if installed is not None:
            config.price_table(installed)
    except PriceError as exc:
        problems.append(f"[billing] prices_file: {exc}; install a valid one with `midway "
                        "billing prices update`, or remove it")
    return problems


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """Create the tables, or add the columns a newer version added to older ones."""
    config = _config(midway)
    return await upgrade_store(config.store, SCHEMA, label=LABEL, pg_schema=config.schema)
