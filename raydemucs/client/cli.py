"""`python -m raydemucs`: the group, the task commands (submit, status, wait, fetch, cancel,
list, retry, purge) and `main`, the only place that exits; `cli_admin` holds the others."""
from __future__ import annotations

import contextlib
import os
import sys
import time

import click

from ..core.errors import RayDemucsError
from ..storage.uris import is_uri
from .cli_admin import ADMIN_COMMANDS
from .cli_options import emit, service_options
from .render import (
    BARS_UP_TO,
    batch_bar,
    batch_line,
    batch_summary,
    print_outputs,
    progress_bars,
    status_table,
    task_line,
)


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
@click.option("--preset", metavar="NAME", help="Run the ensemble preset NAME (config "
              "ensembles.presets: several models as one task, see docs/ensembles.md).")
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
        emit({k: record[k] for k in ("task_id", "file_id", "project", "state")}, as_json,
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
        emit(record, as_json, print_outputs(record))
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
                emit(reply, True, "")

    summary = manager.submit_batch(inputs, from_list, project, priority, strict, create=wait,
                                   on_chunk=on_chunk, **options)
    emit({"batch": summary.to_dict()}, as_json, batch_summary(summary.to_dict()))
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
    emit(view, as_json, batch_line(view))
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
        emit(data, as_json, text)
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
        emit(record, as_json, print_outputs(record))
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
        emit({"task_id": task_id, "outputs": outputs}, as_json,
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
        emit({"batch_id": batch_id, "cancelled": count}, as_json,
              f"batch {batch_id}: {count} queued or running task(s) cancelled")
        return
    record = manager.cancel(task_id)
    emit(record, as_json, task_line(record))


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
        emit(outcome, as_json, f"{task_id} purged: stems "
              f"{'deleted' if outcome['stems_deleted'] else 'already gone'}; input "
              + ("deleted" if outcome["input_deleted"] else
                 f"kept for {kept} other task(s)" if kept else "not the service's"))


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
        emit(record, as_json, task_line(record, detail=state == "failed"))
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
        emit({"batch_id": batch_id, "retried": count}, as_json,
              f"batch {batch_id}: {count} failed or cancelled task(s) queued again")
    for task_id in task_ids:
        emit(manager.retry(task_id), as_json, task_line(manager.get_status(task_id)))


for command in ADMIN_COMMANDS:
    cli.add_command(command)


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
