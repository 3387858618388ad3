"""Text the CLI prints: task lines, the status table, progress bars."""
from __future__ import annotations

import contextlib
import time

from tqdm import tqdm


def _mb(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MB"


def task_line(record: dict, detail: bool = False) -> str:
    line = f"{record['task_id']}  {record['state']:<9}  {record['project']}/{record['file_id']}"
    if not detail:
        return line
    lines = [line, f"  attempts: {record['attempts']}  progress: {record['progress']:.0%}  "
                   f"worker: {record['worker'] or '-'}"]
    if record.get("error"):
        lines.append(f"  error: {record['error']['type']}: {record['error']['message']}")
    for stem, path in (record.get("outputs") or {}).items():
        lines.append(f"  {stem}: {path}")
    if record.get("expired_at"):
        lines.append(f"  expired: its stored files were deleted {_when(record['expired_at'])}")
    lines += [f"  webhook {delivery_line(delivery)}" for delivery in record.get("deliveries", [])]
    return "\n".join(lines)


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def delivery_line(delivery: dict) -> str:
    """One webhook delivery: id, event, state, attempts, the last answer, the next try."""
    line = (f"{delivery['delivery_id']}  {delivery['event']:<14}  {delivery['state']:<9}  "
            f"attempts {delivery['attempts']}")
    if delivery["last_error"] or delivery["last_status"]:
        line += f"  last: {delivery['last_error'] or delivery['last_status']}"
    if delivery["state"] == "pending":
        line += f"  next try {_when(delivery['next_at'])}"
    return f"{line}  {delivery['url']}"


def print_outputs(record: dict) -> str:
    return task_line(record, detail=True)


def pool_line(pool: dict) -> str:
    models = ", ".join(pool["models"]) or "every other model"
    return (f"pool {pool['name']}: {pool['workers']} workers ({pool['pending']} starting), "
            f"{pool['queued']} queued; {pool['min_workers']}-{pool['max_workers']} workers; {models}")


def held_lines(status: dict) -> list[str]:
    """What the service holds under its state directory and its next expiry; webhooks."""
    lines = []
    held = status.get("retention") or {}
    if "uploads_bytes" in held:  # after the first sweep
        lines.append(f"held: uploads {_mb(held['uploads_bytes'])}, results "
                     f"{_mb(held['results_bytes'])}; next expiry {_when(held['next_expiry_at'])}")
    hooks = status.get("webhooks") or {}
    if hooks:
        lines.append("webhooks: " + "  ".join(f"{state} {count}" for state, count in hooks.items()))
    return lines


def status_table(status: dict) -> str:
    queue = status["queue"]
    lines = [f"service {status['service']}  "
             f"{'accepting' if status['accepting'] else 'draining'}  "
             f"uptime {status['uptime_s']:.0f} s",
             "tasks: " + "  ".join(f"{state} {count}" for state, count in queue.items()),
             *map(pool_line, status.get("pools", [])), *held_lines(status), ""]
    width = max([10, *(len(w["worker_id"]) for w in status["workers"])])
    lines.append(f"{'WORKER':<{width}} {'STATE':<10} {'TASK':<17} {'PROGRESS':>8} {'PID':>7} "
                 f"{'RSS':>8} {'CPU%':>6} {'THREADS':>7} {'DONE':>5} {'FAILED':>6} {'RESTARTS':>8}")
    progress = {r["task_id"]: r["progress"] for r in status.get("running", [])}
    for w in status["workers"]:
        task = w["task_id"] or "-"
        done = f"{progress[task]:.0%}" if task in progress else "-"
        cpu = "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.0f}"
        lines.append(f"{w['worker_id']:<{width}} {w['state']:<10} {task:<17} {done:>8} "
                     f"{w['pid'] or '-':>7} {_mb(w['rss_bytes']):>8} {cpu:>6} {_threads(w):>7} "
                     f"{w['tasks_done']:>5} {w['tasks_failed']:>6} {w['restarts']:>8}")
        if w.get("memory_paused"):
            lines.append("  paused: its node is below workers.min_free_memory_mb of free memory")
        if w.get("load_error"):
            lines.append(f"  model load error: {w['load_error']}")
    return "\n".join(lines)


def _threads(worker: dict) -> str:
    """The threads of its last forward pass, and how many of them idle workers lent: `2 (+1)`."""
    if worker.get("threads") is None:
        return "-"
    lent = worker.get("lent_threads") or 0
    return f"{worker['threads']} (+{lent})" if lent else str(worker["threads"])


@contextlib.contextmanager
def progress_bars(records: list[dict], enabled: bool = True):
    """One bar per task and an overall one; yields `update(records)`."""
    names = {r["task_id"]: f"{r['project']}/{r['file_id']}"[-30:] for r in records}
    bars = {task_id: tqdm(total=100, desc=name, position=i + 1, leave=True, disable=not enabled,
                          bar_format="{desc} {bar} {n:3.0f}%")
            for i, (task_id, name) in enumerate(names.items())}
    overall = tqdm(total=100 * len(records), desc="all", position=0, disable=not enabled,
                   bar_format="{desc:<40} {bar} {percentage:3.0f}%")

    def update(current: list[dict]) -> None:
        for record in current:
            bar = bars[record["task_id"]]
            bar.n = round(100 * record["progress"])
            bar.set_description_str(f"{names[record['task_id']]:<30} {record['state']:<9}")
        overall.n = sum(bars[r["task_id"]].n for r in current)
        overall.refresh()

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()
        overall.close()


BARS_UP_TO = 24  # a bar per task up to this many; one bar for the whole batch past it


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def batch_line(view: dict) -> str:
    """A batch in one line: counts by state, audio done and left, rate and ETA."""
    states = "  ".join(f"{state} {count}" for state, count in view["by_state"].items() if count)
    rate = view["audio_s_per_s"]
    speed = f"{rate:.2f} audio s/s" if rate else (
        f"{view['tasks_per_s']:.2f} tasks/s" if view["tasks_per_s"] else "rate -")
    return (f"batch {view['batch_id']}: {view['tasks']} tasks: {states}; audio "
            f"{_duration(view['audio_s_done'])} done, {_duration(view['audio_s_left'])} left; "
            f"{speed}; ETA {_duration(view['eta_s'])}")


def batch_summary(summary: dict) -> str:
    """What a batch submit did, and the first refusals, one line each."""
    lines = [f"batch {summary['batch_id']}: {summary['items']} items: {summary['queued']} queued, "
             f"{summary['skipped']} skipped (done already), {summary['known']} already queued, "
             f"{summary['refused']} refused"]
    lines += [f"  refused {r['input']}: {r['error']['message']}" for r in summary["refusals"][:20]]
    if summary["refused"] > 20:
        lines.append(f"  ... and {summary['refused'] - 20} more (--json lists them)")
    return "\n".join(lines)


@contextlib.contextmanager
def batch_bar(enabled: bool = True):
    """One bar for a whole batch (ended / all tasks, rate and ETA); yields `update(view)`."""
    bar = tqdm(total=1, desc="batch", disable=not enabled,
               bar_format="{desc} {bar} {n}/{total} {postfix}")

    def update(view: dict) -> None:
        ended = sum(view["by_state"][s] for s in ("succeeded", "failed", "cancelled"))
        bar.total, bar.n = view["tasks"], ended
        rate = view["audio_s_per_s"]
        bar.set_postfix_str(f"{rate:.2f} audio s/s, ETA {_duration(view['eta_s'])}" if rate
                            else f"ETA {_duration(view['eta_s'])}")

    try:
        yield update
    finally:
        bar.close()


def model_line(model: dict) -> str:
    """One model of `raydemucs models`: its name, then what it is (or why it cannot be used)."""
    if "error" in model:
        return f"{model['name']}  refused: {model['error']}"
    score = model["score"]
    parts = [model["architecture"], "/".join(model["stems"] or ["stems known once loaded"]),
             f"{model['sample_rate']} Hz" if model["sample_rate"] else None,
             f"licence {model['licence']}" + ("" if model["servable"] else " (not allowed here)"),
             f"{model['size'] / 1e6:.1f} MB" if model["size"] is not None else None,
             f"sha256 {model['sha256'][:12]}" if model["sha256"] else None,
             score and (f"SDR {score['sdr']} dB" + (f" {score['stem']}" if score.get("stem")
                                                     else "") + f" on {score['test_set']}"),
             model["source"]]
    return f"{model['name']}  " + ", ".join(part for part in parts if part)
