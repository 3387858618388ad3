"""The service's custom metrics, read back from the node's Prometheus endpoint after real tasks."""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import wait_for

EXPORT_DEADLINE_S = 90.0  # Ray flushes metrics to the node's exporter every few seconds
DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "raydemucs-dashboard.json"


def metrics_url() -> str:
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def scrape(service: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample the node exports for `service`."""
    with urllib.request.urlopen(metrics_url(), timeout=10) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.labels.get("service") == service]


def value(samples, name: str, **labels) -> float | None:
    """The sum over series of `name` matching `labels`, or None when none is exported."""
    found = [v for n, tags, v in samples
             if n == name and all(tags.get(k) == v2 for k, v2 in labels.items())]
    return sum(found) if found else None




def scrape_until(service: str, settled) -> list:
    """Scrape until `settled(samples)` holds; fail with what was last seen at the deadline."""
    deadline = time.monotonic() + EXPORT_DEADLINE_S
    while True:
        samples = scrape(service)
        if settled(samples):
            return samples
        if time.monotonic() > deadline:
            names = sorted({(n, tuple(sorted(t.items())), v) for n, t, v in samples
                            if not n.endswith("_bucket")})
            raise AssertionError(f"metrics never settled; last seen: {names}")
        time.sleep(0.5)


def test_metrics_count_tasks_retries_audio_queue_and_workers(make_service, audio, tmp_path,
                                                             tiny_repo):
    manager = make_service()
    service = manager.config.service.name
    out = tmp_path / "out"
    # no task arrives with a better priority than one already waiting: nothing steps back
    quick = [manager.add_task(audio(f"{p}.wav", seconds=1.0), output_dir=out, priority=p)
             for p in ("high", "normal")]
    bad = manager.add_task(audio("bad.wav", seconds=1.0), output_dir=out, two_stems="piano",
                           model="tiny", repo=str(tiny_repo))  # the worker judges: it fails
    long = manager.add_task(audio("long.wav", seconds=30.0), output_dir=out, segment=2.0)
    quick.append(manager.add_task(audio("low.wav", seconds=1.0), output_dir=out, priority="low"))
    wait_for(lambda: manager.get_status(long)["progress"] > 0.05)
    worker = next(w for w in manager.get_status()["workers"] if w["task_id"] == long)
    os.kill(worker["pid"], signal.SIGKILL)
    records = {r["task_id"]: r for r in manager.wait_all([*quick, bad, long], timeout=180)}
    assert [records[t]["state"] for t in (*quick, bad, long)] == ["succeeded"] * 3 + ["failed", "succeeded"]
    assert records[long]["attempts"] == 2

    # each metric reaches the exporter on its own: wait until the gauges asserted below are there
    samples = scrape_until(service, lambda s: (
        value(s, "ray_raydemucs_tasks_finished_total", state="succeeded") == 4
        and value(s, "ray_raydemucs_workers", state="idle") == 2
        and value(s, "ray_raydemucs_scheduler_loop_lag_seconds_count")
        and all(value(s, "ray_raydemucs_queue_depth", priority=p) is not None
                for p in ("high", "normal", "low"))
        and all(value(s, "ray_raydemucs_worker_cpu_percent", worker=w) is not None
                for w in ("worker-0", "worker-1"))))

    assert value(samples, "ray_raydemucs_tasks_submitted_total") == 5
    assert value(samples, "ray_raydemucs_tasks_finished_total", state="failed") == 1
    assert value(samples, "ray_raydemucs_tasks_finished_total", state="cancelled") is None
    assert value(samples, "ray_raydemucs_task_retries_total") == 1
    assert value(samples, "ray_raydemucs_worker_restarts_total", worker=worker["worker_id"]) == 1
    assert value(samples, "ray_raydemucs_audio_seconds_total") == pytest.approx(33.0, abs=0.01)
    run_count = "ray_raydemucs_task_run_seconds_count"
    assert {o: value(samples, run_count, outcome=o) for o in ("succeeded", "retried", "failed")} \
        == {"succeeded": 4, "retried": 1, "failed": 1}
    # a task prefetched behind the killed one goes back uncounted (a step back, not a retry)
    stepped_back = value(samples, run_count, outcome="stepped_back") or 0
    assert value(samples, "ray_raydemucs_task_queue_wait_seconds_count") == 6 + stepped_back
    assert {p: value(samples, "ray_raydemucs_queue_depth", priority=p)
            for p in ("high", "normal", "low")} == {"high": 0, "normal": 0, "low": 0}
    assert value(samples, "ray_raydemucs_tasks", state="succeeded") == 4
    assert value(samples, "ray_raydemucs_scheduler_loop_lag_seconds_count") > 0  # sampled
    assert manager.get_status()["loop_lag"]["samples"] > 0
    assert value(samples, "ray_raydemucs_tasks", state="running") == 0
    assert value(samples, "ray_raydemucs_workers", state="busy") == 0
    for worker_id in ("worker-0", "worker-1"):
        assert value(samples, "ray_raydemucs_worker_rss_bytes", worker=worker_id) > 50e6
        assert value(samples, "ray_raydemucs_worker_cpu_percent", worker=worker_id) >= 0
    queried = set(re.findall(r"ray_raydemucs_\w+", DASHBOARD.read_text()))
    assert queried <= {name for name, _, _ in samples}, "the Grafana dashboard queries unknown metrics"
