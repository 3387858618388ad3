"""The administration commands: start and stop the service, check a machine, API keys, webhook
deliveries, the models and the configuration. `cli.py` registers them on its group."""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import asdict

import click
import yaml

from ..core.config import Config, load_config
from ..core.errors import ServiceUnavailable
from ..core.keys import ROLES, KeyEntry, KeyStore
from ..core.task import PRIORITIES
from ..webhooks.signing import load_secret, owner_secret
from .cli_options import config_options, emit, service_options
from .ray_head import DEFAULT_PORT, ensure_head, stop_head
from .render import delivery_line, model_line


@click.group()
def webhooks():
    """Webhook deliveries: the signing secret, failed deliveries, retries."""


@webhooks.command("secret")
@click.option("--key", "key_name", metavar="NAME", help="The secret of the tasks of the API key "
              "called NAME (each key has its own; GET /v1/webhooks/secret answers it to the key).")
@service_options
def webhooks_secret(manager, key_name):
    """The secret webhooks are signed with (Standard Webhooks, `whsec_...`): give it to the
    receivers. Without --key, the secret of tasks submitted without a key (the CLI, a loopback
    service without keys). Kept in the service's state directory (run this on the machine that
    holds it)."""
    state = manager.config.state_path
    secret = load_secret(state)
    if key_name:
        secret = owner_secret(secret, KeyStore(state).table().named(key_name).owner)
    click.echo(secret)


@webhooks.command("list")
@click.option("--failed", is_flag=True, help="Only dead deliveries and those being retried.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@service_options
def webhooks_list(manager, failed, limit, as_json):
    """Webhook deliveries, newest first."""
    for delivery in manager.webhook_deliveries(failed, limit):
        emit(delivery, as_json, delivery_line(delivery))


@webhooks.command("retry")
@click.argument("delivery_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@service_options
def webhooks_retry(manager, delivery_ids, as_json):
    """Send deliveries again now (a dead one gets a fresh set of attempts)."""
    for delivery_id in delivery_ids:
        delivery = manager.retry_delivery(delivery_id)
        emit(delivery, as_json, delivery_line(delivery))


@click.command()
@click.option("--foreground", is_flag=True, help="Stay attached; SIGINT/SIGTERM drain and stop.")
@click.option("--http", "with_http", is_flag=True, help="Also serve the HTTP API on "
              "http.host:http.port (default 127.0.0.1:8000; as http.enabled: true).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the Ray head started when no --address is given and no Ray runs here.")
@service_options
def start(manager, foreground, port, with_http):
    """Start the service: the scheduler actor and its workers (harmless if already running).

    With no --address, a local Ray head is started first unless `ray start` already runs one;
    `stop` ends that head.
    """
    state = manager.config.state_path
    started_head = not manager.address and ensure_head(
        state, port, manager.config.service.dashboard_host)
    manager.scheduler(create=True, detached=not foreground)
    info = manager.get_status()
    click.echo(f"raydemucs service {info['service']!r} running with {len(info['workers'])} "
               f"worker(s); journal {info['journal']}")
    if with_http or manager.config.http.enabled:
        click.echo(f"HTTP API on {manager.start_http()} (docs at /docs)")

    if foreground:
        _serve_until_signal(manager)
        if started_head:
            stop_head(state)


def _serve_until_signal(manager) -> None:
    signals = []

    def on_signal(signum, _frame):
        signals.append(signum)
        if len(signals) == 1:
            click.echo(f"draining (up to {manager.config.service.shutdown_grace_s:g} s); "
                       "send the signal again to stop now", err=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not signals:
        time.sleep(0.2)
        try:
            manager.get_status()
        except ServiceUnavailable:
            click.echo("the service was stopped elsewhere", err=True)
            return
    summary = manager.shutdown(hurry=lambda: len(signals) > 1)
    click.echo(f"stopped: {len(summary['interrupted'])} task(s) interrupted, {summary['queued']} "
               "queued; both resume on the next start")


@click.command()
@click.option("--now", is_flag=True, help="Do not wait for running tasks (they are retried on the next start).")
@click.option("--grace", type=float, help="Seconds to let running tasks finish (default: config).")
@service_options
def stop(manager, now, grace):
    """Drain and stop the service, and the Ray head `start` launched; queued tasks wait in the
    journal for the next start."""
    state = manager.config.state_path
    try:
        manager.scheduler(create=False)
    except ServiceUnavailable:
        head = stop_head(state)
        if head is None:
            raise
        click.echo(f"no raydemucs service {manager.config.service.name!r} answered; stopped the "
                   f"Ray head raydemucs started here (pid {head})")
        return
    summary = manager.shutdown(now=now, grace_s=grace)
    stop_head(state)
    click.echo(f"stopped: {len(summary['interrupted'])} task(s) interrupted, {summary['queued']} "
               "queued for the next start")


@click.command()
@service_options
def doctor(manager):
    """Check Python, Demucs, the audio decoders, memory, the model, directories, Ray and the
    service."""
    from .doctor import run_checks

    checks = run_checks(manager.config, manager.address)
    for check in checks:
        click.echo(f"{'ok' if check.ok else 'FAIL':4}  {check.name}: {check.detail}")
        if not check.ok:
            click.echo(f"      fix: {check.fix}")
    sys.exit(0 if all(check.ok for check in checks) else 1)


@click.group()
def keys():
    """API keys of the HTTP API, kept hashed in the service's state directory: run these on the
    machine that holds it (the head node). A running service sees changes within seconds."""


@keys.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="tenant", show_default=True,
              help="tenant: its own tasks and its own view of the service; operator: also "
              "every owner's view in status and the page's operator view.")
@click.option("--max-queued", type=int, help="Unfinished tasks this key may have at once.")
@click.option("--max-priority", type=click.Choice(tuple(PRIORITIES)), default="normal",
              show_default=True, help="The highest priority its tasks may ask for.")
@click.option("--max-shifts", type=int, help="The most `shifts` its tasks may ask for.")
@click.option("--max-overlap", type=float, help="The most `overlap` its tasks may ask for.")
@click.option("--input", "inputs", multiple=True, metavar="PREFIX",
              help="An input URI prefix its tasks may name (repeat it; default: the service's).")
@service_options
def keys_add(manager, name, role, max_queued, max_priority, max_shifts, max_overlap, inputs):
    """Create a key called NAME; the key itself is printed once, on the last line."""
    key = KeyStore(manager.config.state_path).add(
        name, max_queued, role=role, max_priority=max_priority, max_shifts=max_shifts,
        max_overlap=max_overlap, inputs=list(inputs) or None)
    click.echo(f"key {name!r} added; send it as `Authorization: Bearer KEY` (it is shown only now):")
    click.echo(key)


def _limits(entry: KeyEntry) -> str:
    """A key's role and ceilings, in a line."""
    parts = [entry.role, f"priority up to {entry.max_priority}",
             "no cap" if entry.max_queued is None else f"at most {entry.max_queued} unfinished"]
    parts += [f"{field} up to {value:g}" for field, value in (
        ("shifts", entry.max_shifts), ("overlap", entry.max_overlap)) if value is not None]
    if entry.inputs is not None:
        parts.append(f"inputs under {', '.join(entry.inputs)}")
    return ", ".join(parts)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@service_options
def keys_list(manager, as_json):
    """The keys (names, ids, roles, creation times, caps and ceilings; never the keys)."""
    for entry in KeyStore(manager.config.state_path).table().entries:
        shown = {k: v for k, v in asdict(entry).items() if k != "sha256"}
        emit({**shown, "id": entry.owner}, as_json,
             f"{entry.name}  ({entry.owner})  created {time.ctime(entry.created_at)}  "
             f"{_limits(entry)}")


@keys.command("revoke")
@click.argument("name")
@service_options
def keys_revoke(manager, name):
    """Revoke the key called NAME (its requests get 401 within seconds)."""
    KeyStore(manager.config.state_path).revoke(name)
    click.echo(f"key {name!r} revoked")


@click.command()
@click.option("--repo", type=click.Path(), help="List a local model folder instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@config_options
def models(repo, as_json, profile, config_file):
    """List the models and what each is: architecture, stems, sample rate, licence, source, size,
    sha256, published score (the catalogue and demucs's names, or those in --repo)."""
    from ..models.catalogue import list_models

    config = load_config(profile, config_file)
    for model in list_models(repo or config.separation.repo, config.models):
        emit(model, as_json, model_line(model))


@click.group("config")
def config_group():
    """The configuration: what every layer makes of it, its schema, its reference."""


@config_group.command("show")
@config_options
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
def config_show(profile, config_file, as_json):
    """The effective config: the defaults, default.yaml, the profile or file, then the
    environment (what `start` with the same options would run with)."""
    data = load_config(profile, config_file).to_dict()
    text = json.dumps(data, indent=2) + "\n" if as_json else yaml.safe_dump(data, sort_keys=False)
    click.echo(text, nl=False)


@config_group.command("schema")
def config_schema():
    """The JSON schema of the whole config: every section and key, its type, range and default."""
    click.echo(json.dumps(Config.model_json_schema(), indent=2))


@config_group.command("reference")
def config_reference():
    """Every section and key in Markdown, as docs/configuration.md shows them."""
    from ..core.config_reference import reference_markdown

    click.echo(reference_markdown(), nl=False)


ADMIN_COMMANDS = (start, stop, doctor, keys, webhooks, models, config_group)
