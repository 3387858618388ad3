"""Health rules and samples, without Ray: the recycle policy, memory release, a process's figures."""
from __future__ import annotations

import psutil

from raydemucs.worker.health import HealthPolicy, MemoryReleases, release_free_memory, sample


def test_policy_rules():
    policy = HealthPolicy(max_rss_mb=100, min_free_memory_mb=500, max_missed_pings=3)
    assert policy.too_big(101 * 2**20) and not policy.too_big(99 * 2**20) and not policy.too_big(None)
    assert not HealthPolicy(0, 0, 1).too_big(10**12)
    assert policy.node_has_room(None) and policy.node_has_room(600 * 2**20)
    assert not policy.node_has_room(400 * 2**20)
    assert policy.hung(3) and not policy.hung(2)


def test_the_derived_limit_is_a_growth_over_the_first_task_and_the_lower_limit_wins():
    growth = HealthPolicy(max_rss_mb=0, min_free_memory_mb=0, max_missed_pings=1,
                          max_rss_growth=0.5)
    assert growth.rss_limit_bytes(None) is None and not growth.too_big(10**12, None)
    assert growth.rss_limit_bytes(400 * 2**20) == 600 * 2**20
    assert growth.too_big(601 * 2**20, 400 * 2**20) and not growth.too_big(599 * 2**20, 400 * 2**20)
    both = HealthPolicy(500, 0, 1, max_rss_growth=0.5)
    assert both.rss_limit_bytes(400 * 2**20) == 500 * 2**20
    assert both.rss_limit_bytes(200 * 2**20) == 300 * 2**20


def test_freed_heap_pages_go_back_to_the_system():
    """What a worker keeps after a task without `release_memory`: blocks freed below one still
    in use stay in the process (glibc trims only the heap's top) until malloc_trim."""
    process = psutil.Process()
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of heap, below the mmap threshold
    keep = blocks[-1]
    del blocks
    held = process.memory_info().rss
    release_free_memory()
    assert held - process.memory_info().rss > 100 * 2**20
    assert len(keep) == 4000


def test_memory_is_released_at_most_once_per_interval():
    now = [100.0]
    releases = MemoryReleases(every_s=5.0, clock=lambda: now[0])
    done = []
    for step in (0.0, 1.0, 3.9, 1.1, 0.5, 5.0):
        now[0] += step
        done.append(releases())
    assert done == [True, False, False, True, False, True]


def test_sample_reports_this_process():
    figures = sample(psutil.Process(), "cpu")
    assert figures["rss_bytes"] > 10 * 2**20 and figures["num_threads"] >= 1
    assert figures["node_available_bytes"] > 0 and figures["gpu_memory_bytes"] is None

