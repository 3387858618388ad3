"""`python -m raydemucs`: thin click commands over WorkerManager; the only place that exits."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time

import click

from ..core.config import load_config
from ..core.errors import RayDemucsError, ServiceUnavailable
from ..core.keys import KeyStore
from ..core.logs import configure_logging
from ..storage.uris import is_uri
from ..webhooks.signing import load_secret
from .head import DEFAULT_PORT, ensure_head, stop_head
from .manager import WorkerManager
from .render import (
    BARS_UP_TO,
    batch_bar,
    batch_line,
    batch_summary,
    delivery_line,
    print_outputs,
    progress_bars,
    status_table,
    task_line,
)


def service_options(func):
    """--address, --profile and --config, turned into a WorkerManager passed as `manager`."""
    @click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (ray://, host:port); "
                  "default: the cluster running here, else a new local one.")
    @click.option("--profile", help="Shipped profile: default, dev, prod, test.")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False),
                  help="YAML file overriding config keys.")
    @click.option("--log-format", type=click.Choice(["text", "json"]),
                  help="Log lines as text or JSON objects (default: service.log_format).")
    @functools.wraps(func)
    def wrapper(address, profile, config_file, log_format, **kwargs):
        flags = {"service": {"log_format": log_format}} if log_format else {}
        config = load_config(profile, config_file, overrides=flags)
        configure_logging(config.service.log_level, config.service.log_format)
        return func(manager=WorkerManager(config, address=address), **kwargs)
    return wrapper


def _emit(data, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, ensure_ascii=False) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raydemucs")
def cli():
    """Separate songs into stems with Demucs on a Ray actor pool."""


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@click.option("-o", "--out", "output_dir", help="Output directory, a path or a URI such as "
              "s3://bucket/stems (default: service.output_dir). With --upload --wait: where the "
              "stems are fetched to.")
@click.option("--project", default="default", show_default=True, help="Project name (a folder).")
@click.option("--file-id", help="Output folder name; default: the input's name without extension.")
@click.option("--priority", default="normal", show_default=True, help="high, normal, low or 0-9.")
@click.option("-n", "--name", "model", help="Model name, as demucs's -n (default: config).")
@click.option("--repo", type=click.Path(), help="Local folder of models (.yaml and .th files).")
@click.option("--shifts", type=int, help="Random shifts averaged (demucs default 1).")
@click.option("--overlap", type=float, help="Overlap between segments (default 0.25).")
@click.option("--segment", type=float, help="Segment length in seconds.")
@click.option("--two-stems", metavar="STEM", help="Only STEM and no_STEM.")
@click.option("--mp3", "fmt", flag_value="mp3", help="Write mp3 stems.")
@click.option("--flac", "fmt", flag_value="flac", help="Write flac stems.")
@click.option("--mp3-bitrate", type=int, help="mp3 bitrate in kbps (default 320).")
@click.option("--mp3-preset", type=click.IntRange(2, 7), help="2 best quality .. 7 fastest.")
@click.option("--int24", "depth", flag_value="int24", help="24-bit wav.")
@click.option("--float32", "depth", flag_value="float32", help="32-bit float wav.")
@click.option("--clip-mode", type=click.Choice(["rescale", "clamp", "none"]))
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp32 (default, within 1 LSB of demucs), bf16 (CPUs with AVX512-BF16 or AMX, GPUs) or fp16 (GPUs): faster, stems within the SNR docs/precision.md gives.")
@click.option("-d", "--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Run only on workers of this device (a pool is cuda when its workers have "
              "GPUs); refused when the model's pool runs on the other. Default auto.")
@click.option("--timeout", "timeout_s", type=float, help="Seconds per attempt (default: config).")
@click.option("--force", is_flag=True, help="Replace stems that already exist.")
@click.option("--no-cache", is_flag=True, help="Separate even if stems for the same input bytes, "
              "model and options exist (they are linked in otherwise).")
@click.option("--upload", is_flag=True, help="Send the files' bytes with the tasks, for a cluster "
              "that cannot read them; the service keeps the stems (see `fetch`).")
@click.option("--webhook", "webhook_url", metavar="URL", help="Call URL (a signed POST, see "
              "`webhooks secret`) when each task ends.")
@click.option("--webhook-events", metavar="LIST", help="Comma-separated events to call it on "
              "(default task.succeeded,task.failed,task.cancelled; also task.started).")
@click.option("--wait", is_flag=True, help="Show progress and wait; starts Ray and a scheduler "
              "for this run when no service is running.")
@click.option("--from", "from_list", type=click.Path(dir_okay=False),
              help="A list of inputs: one per line, or CSV with input,file_id,project,priority.")
@click.option("--strict", is_flag=True, help="In a batch, refuse every input if any is refused.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task.")
@service_options
def submit(manager, inputs, output_dir, project, file_id, priority, fmt, depth, timeout_s, force,
           no_cache, upload, webhook_url, webhook_events, wait, as_json, from_list, strict,
           **flags):
    """Queue INPUT files (paths or URIs such as s3://bucket/song.mp3) for separation into
    OUT/PROJECT/FILE_ID/. A folder (searched recursively for audio files), a bucket prefix
    (s3://bucket/music/), several inputs or a --from list make one batch."""
    if not inputs and not from_list:
        raise click.UsageError("give INPUT files, folders or prefixes, or --from LIST")
    if file_id and (len(inputs) > 1 or from_list or _is_folder(inputs[0])):
        raise click.UsageError("--file-id names one input; give one INPUT or drop it")
    if upload and output_dir and is_uri(output_dir):
        raise click.UsageError("with --upload, -o names the local directory --wait fetches the "
                               "stems to, not a URI")
    manager.local_dashboard = False
    options = {key: value for key, value in flags.items() if value is not None}
    options.update({"format": fmt} if fmt else {})
    options.update({"wav_depth": depth} if depth else {})
    options.update(output_dir=output_dir, force=force, timeout_s=timeout_s, cache=not no_cache,
                   upload=upload, webhook_url=webhook_url, webhook_events=webhook_events)
    if len(inputs) != 1 or from_list or _is_folder(inputs[0]):
        _submit_batch(manager, inputs, from_list, project, priority, strict, wait, as_json,
                      options)
        return
    records = manager.submit([manager.prepare_task(inputs[0], file_id, project_name=project,
                                                   priority=priority, **options)], create=wait)
    for record in records:
        _emit({k: record[k] for k in ("task_id", "file_id", "project", "state")}, as_json,
              task_line(record))
    if not wait:
        return
    records = _wait_for_tasks(manager, [r["task_id"] for r in records], as_json, upload and (
        output_dir or manager.config.service.output_dir), force)
    sys.exit(1 if any(r["state"] != "succeeded" for r in records) else 0)


def _is_folder(given: str) -> bool:
    return is_uri(given) and given.endswith("/") or not is_uri(given) and os.path.isdir(given)


def _wait_for_tasks(manager, task_ids: list[str], as_json: bool, fetch_to: str | None,
                    force: bool) -> list[dict]:
    """Bars until the tasks end (then the stems of uploaded ones are fetched), and their lines;
    a scheduler this command started is stopped. Their records."""
    with _stopping_own_scheduler(manager):
        with progress_bars(manager.get_tasks(task_ids), enabled=not as_json) as update:
            records = manager.wait_all(task_ids, on_update=update)
        for record in records:
            if fetch_to and record["state"] == "succeeded":
                record["outputs"] = manager.fetch(record["task_id"], fetch_to, force=force)
    for record in records:
        _emit(record, as_json, print_outputs(record))
    return records


@contextlib.contextmanager
def _stopping_own_scheduler(manager):
    """A scheduler this command started is stopped at the end: drained, or at once on Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        if manager.owns_scheduler:
            manager.shutdown(now=True)
        raise
    if manager.owns_scheduler:
        manager.shutdown()


def _submit_batch(manager, inputs, from_list, project, priority, strict, wait, as_json,
                  options) -> None:
    """Submit a batch: a line (or JSON object) per task as chunks are accepted, a summary, and
    with --wait one bar for the whole batch past a few dozen tasks."""
    task_ids = []

    def on_chunk(replies: list[dict]) -> None:
        for reply in replies:
            if "task_id" in reply and len(task_ids) <= BARS_UP_TO:
                task_ids.append(reply["task_id"])
            if as_json:
                _emit(reply, True, "")

    summary = manager.submit_batch(inputs, from_list, project, priority, strict, create=wait,
                                   on_chunk=on_chunk, **options)
    _emit({"batch": summary.to_dict()}, as_json, batch_summary(summary.to_dict()))
    if not (summary.queued or summary.known or summary.skipped):
        sys.exit(2)
    if not wait:
        return
    fetch_to = options["upload"] and (options["output_dir"] or manager.config.service.output_dir)
    if len(task_ids) <= BARS_UP_TO:
        records = _wait_for_tasks(manager, task_ids, as_json, fetch_to, options["force"])
        failed = any(r["state"] != "succeeded" for r in records)
    else:
        view = _wait_for_batch(manager, summary.batch_id, as_json, fetch_to=fetch_to,
                               force=options["force"])
        failed = view["by_state"]["failed"] or view["by_state"]["cancelled"]
    sys.exit(1 if summary.refused or failed else 0)


def _wait_for_batch(manager, batch_id: str, as_json: bool, timeout: float | None = None,
                    fetch_to: str | None = None, force: bool = False) -> dict:
    """One bar until the batch ends (then, for uploads, its stems are fetched page by page)."""
    with _stopping_own_scheduler(manager):
        with batch_bar(enabled=not as_json) as update:
            view = manager.wait_batch(batch_id, timeout=timeout, on_update=update)
        cursor = None
        while fetch_to:
            page = manager.list_tasks("succeeded", 500, batch_id=batch_id, before_seq=cursor)
            for record in page:
                manager.fetch(record["task_id"], fetch_to, force=force)
            if len(page) < 500:
                break
            cursor = page[-1]["seq"]
    _emit(view, as_json, batch_line(view))
    return view


BATCH = click.option("--batch", "batch_id", metavar="ID", help="A batch (a submit of several inputs).")


@cli.command()
@click.argument("task_id", required=False)
@BATCH
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", type=float, metavar="SECONDS", help="Refresh every SECONDS until Ctrl-C.")
@service_options
def status(manager, task_id, batch_id, as_json, watch):
    """The service (queue and workers), one task, or a batch (counts, audio done and left, rate,
    ETA)."""
    while True:
        if batch_id:
            data = manager.batch(batch_id)
            text = batch_line(data)
        else:
            data = manager.get_status(task_id)
            text = task_line(data, detail=True) if task_id else status_table(data)
        if watch and not as_json:
            click.clear()
        _emit(data, as_json, text)
        if not watch:
            return
        time.sleep(watch)


@cli.command("wait")
@click.argument("task_ids", nargs=-1)
@BATCH
@click.option("--timeout", type=float, help="Give up after SECONDS (the tasks go on).")
@click.option("--json", "as_json", is_flag=True)
@service_options
def wait_command(manager, task_ids, batch_id, timeout, as_json):
    """Wait until tasks (or a batch) end; exit 1 if any failed or was cancelled."""
    if not task_ids and not batch_id:
        raise click.UsageError("give TASK_IDs or --batch ID")
    manager.scheduler(create=False)
    if batch_id:
        view = _wait_for_batch(manager, batch_id, as_json, timeout)
        sys.exit(1 if view["by_state"]["failed"] or view["by_state"]["cancelled"] else 0)
    records = manager.wait_all(list(task_ids), timeout=timeout)
    for record in records:
        _emit(record, as_json, print_outputs(record))
    sys.exit(1 if any(r["state"] != "succeeded" for r in records) else 0)


@cli.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("-o", "--out", "output_dir", required=True,
              help="Local directory; stems go to OUT/PROJECT/FILE_ID/.")
@click.option("--force", is_flag=True, help="Replace stems that already exist there.")
@click.option("--json", "as_json", is_flag=True)
@service_options
def fetch(manager, task_ids, output_dir, force, as_json):
    """Copy succeeded tasks' stems here, from wherever they are (the service's disk for
    --upload tasks, a bucket, a worker node's disk the scheduler can read)."""
    for task_id in task_ids:
        outputs = manager.fetch(task_id, output_dir, force=force)
        _emit({"task_id": task_id, "outputs": outputs}, as_json,
              "\n".join(f"{task_id} {stem}: {path}" for stem, path in outputs.items()))


@cli.command()
@click.argument("task_id", required=False)
@BATCH
@click.option("--json", "as_json", is_flag=True)
@service_options
def cancel(manager, task_id, batch_id, as_json):
    """Cancel a queued task or abort a running one (or every such task of a batch)."""
    if bool(task_id) == bool(batch_id):
        raise click.UsageError("give a TASK_ID or --batch ID")
    if batch_id:
        count = manager.cancel_batch(batch_id)
        _emit({"batch_id": batch_id, "cancelled": count}, as_json,
              f"batch {batch_id}: {count} queued or running task(s) cancelled")
        return
    record = manager.cancel(task_id)
    _emit(record, as_json, task_line(record))


@cli.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@service_options
def purge(manager, task_ids, as_json):
    """Delete finished tasks' stems and uploaded inputs that the service holds, now (an input
    another task needs stays); the tasks stay listed, expired. Folders named with -o are never
    touched."""
    for task_id in task_ids:
        outcome = manager.purge(task_id)
        kept = outcome["input_kept_for"]
        _emit(outcome, as_json, f"{task_id} purged: stems "
              f"{'deleted' if outcome['stems_deleted'] else 'already gone'}; input "
              + ("deleted" if outcome["input_deleted"] else
                 f"kept for {kept} other task(s)" if kept else "not the service's"))


@cli.group()
def webhooks():
    """Webhook deliveries: the signing secret, failed deliveries, retries."""


@webhooks.command("secret")
@service_options
def webhooks_secret(manager):
    """The secret webhooks are signed with (Standard Webhooks, `whsec_...`): give it to the
    receivers. Kept in the service's state directory (run this on the machine that holds it)."""
    click.echo(load_secret(manager.config.state_path))


@webhooks.command("list")
@click.option("--failed", is_flag=True, help="Only dead deliveries and those being retried.")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@service_options
def webhooks_list(manager, failed, limit, as_json):
    """Webhook deliveries, newest first."""
    for delivery in manager.webhook_deliveries(failed, limit):
        _emit(delivery, as_json, delivery_line(delivery))


@webhooks.command("retry")
@click.argument("delivery_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@service_options
def webhooks_retry(manager, delivery_ids, as_json):
    """Send deliveries again now (a dead one gets a fresh set of attempts)."""
    for delivery_id in delivery_ids:
        delivery = manager.retry_delivery(delivery_id)
        _emit(delivery, as_json, delivery_line(delivery))


@cli.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
              help="Only tasks in this state (failed: the dead letters).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@BATCH
@click.option("--cursor", type=int, metavar="SEQ", help="Go on from a page's last task (its seq).")
@click.option("--json", "as_json", is_flag=True)
@service_options
def list_command(manager, state, limit, batch_id, cursor, as_json):
    """Recent tasks, newest first, a page at a time."""
    records = manager.list_tasks(state, limit, batch_id=batch_id, before_seq=cursor)
    for record in records:
        _emit(record, as_json, task_line(record, detail=state == "failed"))
    if len(records) == limit and not as_json:
        click.echo(f"more: --cursor {records[-1]['seq']}")


@cli.command()
@click.argument("task_ids", nargs=-1)
@BATCH
@click.option("--json", "as_json", is_flag=True)
@service_options
def retry(manager, task_ids, batch_id, as_json):
    """Queue failed or cancelled tasks (or those of a batch) again, as they were submitted."""
    if not task_ids and not batch_id:
        raise click.UsageError("give TASK_IDs or --batch ID")
    if batch_id:
        count = manager.retry_batch(batch_id)
        _emit({"batch_id": batch_id, "retried": count}, as_json,
              f"batch {batch_id}: {count} failed or cancelled task(s) queued again")
    for task_id in task_ids:
        _emit(manager.retry(task_id), as_json, task_line(manager.get_status(task_id)))


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.group()
def keys():
    """API keys of the HTTP API, kept hashed in the service's state directory: run these on the
    machine that holds it (the head node). A running service sees changes within seconds."""


@keys.command("add")
@click.argument("name")
@click.option("--max-queued", type=int, help="Unfinished tasks this key may have at once.")
@service_options
def keys_add(manager, name, max_queued):
    """Create a key called NAME; the key itself is printed once, on the last line."""
    key = KeyStore(manager.config.state_path).add(name, max_queued)
    click.echo(f"key {name!r} added; send it as `Authorization: Bearer KEY` (it is shown only now):")
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@service_options
def keys_list(manager, as_json):
    """The keys (names, creation times, caps; never the keys)."""
    for entry in KeyStore(manager.config.state_path).table().entries:
        cap = "no cap" if entry.max_queued is None else f"at most {entry.max_queued} unfinished"
        _emit({"name": entry.name, "created_at": entry.created_at, "max_queued": entry.max_queued},
              as_json, f"{entry.name}  created {time.ctime(entry.created_at)}  {cap}")


@keys.command("revoke")
@click.argument("name")
@service_options
def keys_revoke(manager, name):
    """Revoke the key called NAME (its requests get 401 within seconds)."""
    KeyStore(manager.config.state_path).revoke(name)
    click.echo(f"key {name!r} revoked")


@cli.command()
@click.option("--repo", type=click.Path(), help="List a local model folder instead.")
def models(repo):
    """List model names (demucs's pretrained ones, or those in --repo)."""
    from ..models.catalogue import list_models

    for name in list_models(repo):
        click.echo(name)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except RayDemucsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
