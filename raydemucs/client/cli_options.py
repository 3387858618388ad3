"""What the commands share: the options that choose a config and a service, and their output."""
from __future__ import annotations

import functools
import json

import click

from ..core.config import load_config
from ..core.logs import configure_logging
from .manager import WorkerManager


def config_options(func):
    """--profile and --config: the layers `load_config` lays over the defaults."""
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                        help="YAML file overriding config keys.")(func)
    return click.option("--profile", help="Shipped profile: default, dev, prod, test.")(func)


def service_options(func):
    """--address, --profile and --config, turned into a WorkerManager passed as `manager`."""
    @click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (ray://, host:port); "
                  "default: the cluster running here, else a new local one.")
    @config_options
    @click.option("--log-format", type=click.Choice(["text", "json"]),
                  help="Log lines as text or JSON objects (default: service.log_format).")
    @functools.wraps(func)
    def wrapper(address, profile, config_file, log_format, **kwargs):
        flags = {"service": {"log_format": log_format}} if log_format else {}
        config = load_config(profile, config_file, overrides=flags)
        configure_logging(config.service.log_level, config.service.log_format)
        return func(manager=WorkerManager(config, address=address), **kwargs)
    return wrapper


def emit(data, as_json: bool, text: str) -> None:
    """`data` as one JSON line with --json, else `text`."""
    click.echo(json.dumps(data, ensure_ascii=False) if as_json else text)
