"""Health rules and samples, without Ray: the recycle rule (a leak told from a working set, the
ceilings), memory release, a process's figures."""
from __future__ import annotations

import psutil

from raydemucs.worker.health import (
    LEAK_SAMPLES,
    WARMUP_TASKS,
    HealthPolicy,
    MemoryReleases,
    MemoryTrend,
    TurnMemory,
    length_class,
    release_free_memory,
    rss_ceiling_bytes,
    sample,
)

MB = 2**20


def warmed(trend: MemoryTrend, rest_mb: float = 330, input_s: float = 1.0) -> MemoryTrend:
    """`trend` after its warm-up tasks, each at rest at `rest_mb` (the first one lower, as a
    cold worker is)."""
    for task in range(WARMUP_TASKS):
        rest = (rest_mb if task else 0.8 * rest_mb) * MB
        assert trend.add(int(rest), int(rest), input_s) is None
    return trend


def feed(trend: MemoryTrend, rests_mb, input_s: float) -> list:
    """The recycle reasons for tasks of `input_s` whose samples at rest are `rests_mb`."""
    return [trend.add(int(rest * MB), int(rest * MB), input_s) for rest in rests_mb]


def test_policy_rules():
    policy = HealthPolicy(max_rss_mb=100, min_free_memory_mb=500, max_missed_pings=3)
    assert policy.node_has_room(None) and policy.node_has_room(600 * MB)
    assert not policy.node_has_room(400 * MB)
    assert policy.hung(3) and not policy.hung(2)


def test_the_ceiling_is_the_lower_of_max_rss_mb_and_the_memory_ray_reserves():
    assert rss_ceiling_bytes(0, 0) is None
    assert rss_ceiling_bytes(100, 0) == 100 * MB and rss_ceiling_bytes(0, 2048) == 2048 * MB
    assert rss_ceiling_bytes(500, 300) == 300 * MB
    trend = HealthPolicy(100, 0, 1, max_rss_growth=0.5).memory_trend(memory_mb=2048)
    assert trend.add(99 * MB) is None
    assert "over its ceiling of 100 MB" in trend.add(101 * MB)  # from the first task on
    assert HealthPolicy(0, 0, 1).memory_trend().add(10**12, 10**12, 1.0) is None


def test_length_classes_are_octaves_of_seconds():
    assert [length_class(s) for s in (0.2, 1.0, 1.5, 2.0, 3.0, 12.0, 600.0)] == [0, 0, 1, 1, 2, 4, 10]


def test_a_worker_that_grows_during_its_warm_up_and_then_holds_is_not_recycled():
    """The issue's soak: RSS after the first task is far below the working size (370 MB, then
    1.5x that after a few hundred tasks); the old rule replaced such workers every 15-30 s."""
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=560)
    assert feed(trend, [560, 575, 570, 590, 580] * 20, 1.0) == [None] * 100
    assert trend.judged == 99


def test_memory_that_grows_with_the_input_is_not_a_leak():
    """A warm worker given 2 s clips, then 12 s clips, then 2 s clips again: its RSS at rest
    steps up to the longer inputs' high-water mark and stays there (as measured: 331 MB after
    1 s clips, 359 after 12 s, 410 after 30 s, then 410 after 1 s clips again)."""
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=330, input_s=2.0)
    assert feed(trend, [331] * 20, 2.0) == [None] * 20
    assert feed(trend, [520, 560, 590, 600, 600] * 4, 12.0) == [None] * 20
    assert feed(trend, [590, 600, 610] * 7, 2.0) == [None] * 21
    assert feed(trend, [900] * 5, 30.0) == [None] * 5
    assert feed(trend, [880] * 10 + [905] * 10, 1.0) == [None] * 20
    assert trend.longest_s == 30.0


def test_a_leak_is_recycled_and_one_high_sample_is_not():
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=400, input_s=2.0)
    assert feed(trend, [400, 700, 410, 700, 700, 420], 2.0) == [None] * 6  # spikes, not in a row
    leaking = [400 + 20 * task for task in range(1, 30)]  # +20 MB per task, at a similar size
    reasons = feed(trend, leaking, 2.0)
    first = next(i for i, reason in enumerate(reasons) if reason)
    assert leaking[first - LEAK_SAMPLES + 1] > 600 >= leaking[first - LEAK_SAMPLES]
    assert "over 1.5x its baseline of 400 MB" in reasons[first] and "a leak" in reasons[first]


def test_a_leak_shows_against_tasks_of_the_same_length_after_a_longer_one():
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=400, input_s=2.0)
    assert feed(trend, [450] * 3, 12.0) == [None] * 3  # a new high-water mark: new baselines
    assert feed(trend, [450, 500, 600], 2.0) == [None] * 3
    reasons = feed(trend, [700, 720, 760], 2.0)
    assert reasons[:2] == [None, None] and "its baseline of 450 MB" in reasons[2]


def test_only_samples_at_rest_of_separated_inputs_are_judged():
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=400)
    assert [trend.add(900 * MB, None, 1.0) for _ in range(10)] == [None] * 10  # not at rest
    assert [trend.add(900 * MB, 900 * MB, None) for _ in range(10)] == [None] * 10  # reused stems
    assert trend.judged == 0 and trend.longest_s == 1.0


def test_no_growth_limit_and_a_rebase():
    never = warmed(MemoryTrend(growth=0.0, ceiling_bytes=None))
    assert feed(never, [5000] * 10, 1.0) == [None] * 10
    trend = warmed(MemoryTrend(growth=0.5, ceiling_bytes=None), rest_mb=400)
    assert feed(trend, [400, 700, 700], 1.0) == [None] * 3  # one more 700 would be a leak
    trend.rebase()  # it ran a piece of another task's long track
    assert feed(trend, [700] * 10, 1.0) == [None] * 10


def test_the_worker_measures_itself_at_rest_at_most_every_interval():
    now = [100.0]
    memory = TurnMemory(psutil.Process(), release=True, every_s=5.0, clock=lambda: now[0])
    taken = []
    for step in (0.0, 1.0, 3.9, 1.1, 0.5, 5.0):
        now[0] += step
        taken.append(memory.at_rest())
    assert [size is not None for size in taken] == [True, False, False, True, False, True]
    assert taken[0] > 10 * MB
    memory.reset()
    assert memory.read() > 10 * MB


def test_freed_heap_pages_go_back_to_the_system():
    """What a worker keeps after a task without `release_memory`: blocks freed below one still
    in use stay in the process (glibc trims only the heap's top) until malloc_trim."""
    process = psutil.Process()
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of heap, below the mmap threshold
    keep = blocks[-1]
    del blocks
    held = process.memory_info().rss
    release_free_memory()
    assert held - process.memory_info().rss > 100 * MB
    assert len(keep) == 4000


def test_memory_is_released_at_most_once_per_interval_unless_forced():
    now = [100.0]
    releases = MemoryReleases(every_s=5.0, clock=lambda: now[0])
    done = []
    for step in (0.0, 1.0, 3.9, 1.1, 0.5, 5.0):
        now[0] += step
        done.append(releases())
    assert done == [True, False, False, True, False, True]
    assert releases(force=True) and not releases()


def test_sample_reports_this_process():
    figures = sample(psutil.Process(), "cpu")
    assert figures["rss_bytes"] > 10 * MB and figures["num_threads"] >= 1
    assert figures["node_available_bytes"] > 0 and figures["gpu_memory_bytes"] is None
