"""BatchedSeparator: segments of several tracks per forward pass, same stems as one by one."""
from __future__ import annotations

import random
import threading

import pytest
import torch
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import SOURCES, get_model

from raydemucs.separation.batching import BatchedSeparator, SharedBatcher, fit_batch_size
from raydemucs.separation.engine import plan_separation, track_stats
from raydemucs.separation.strategies import Attempt

from support import fit_passes_of, make_signal, wait_for

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_htdemucs(seed: int = 0) -> HTDemucs:
    torch.manual_seed(seed)
    return HTDemucs(sources=SOURCES, channels=8, t_layers=1, segment=1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_htdemucs()


@pytest.fixture(scope="module")
def tracks():
    """Three tracks of different lengths, one shorter than a segment."""
    return {name: torch.from_numpy(make_signal(seconds, seed=i).T.copy())
            for i, (name, seconds) in enumerate([("a", 2.3), ("b", 1.6), ("c", 0.6)])}


def plain(model, wav, **options) -> dict:
    mean, std = track_stats(wav)
    out = (apply_model(model, ((wav - mean) / std)[None], split=True, **options) * std + mean)[0]
    return dict(zip(model.sources, out))


def assert_same_stems(result: dict, ref: dict) -> None:
    assert list(result) == list(ref)
    for name in ref:
        assert result[name].shape == ref[name].shape
        assert (result[name] - ref[name]).abs().max().item() <= TOL


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_stems_equal_unbatched_ones(tiny, tracks, batch_size):
    batcher = BatchedSeparator(tiny, batch_size=batch_size)
    results = batcher.separate(tracks)
    for key, wav in tracks.items():
        assert_same_stems(results[key], plain(tiny, wav, shifts=0))
    segments = 4 + 3 + 1
    assert batcher.forward_passes == -(-segments // batch_size)


def test_models_with_varying_input_lengths_batch_by_length(tracks):
    torch.manual_seed(0)
    model = get_model("demucs_unittest")
    batcher = BatchedSeparator(model, batch_size=4)
    results = batcher.separate(tracks, segment=0.5)
    for key, wav in tracks.items():
        assert_same_stems(results[key], plain(model, wav, shifts=0, segment=0.5))


def test_a_bag_batches_each_model_separately(tracks):
    bag = BagOfModels([tiny_htdemucs(0), tiny_htdemucs(1)], weights=[[1, 2, 1, 1], [1, 1, 3, 1]])
    batcher = BatchedSeparator(bag, batch_size=4)
    results = batcher.separate(tracks)
    for key, wav in tracks.items():
        assert_same_stems(results[key], plain(bag, wav, shifts=0))


def test_tracks_with_different_options_share_forward_passes(tiny, tracks, monkeypatch):
    draws = iter([9000])
    monkeypatch.setattr(random, "randint", lambda a, b: next(draws))
    ref_a = plain(tiny, tracks["a"], shifts=1)
    draws = iter([9000])
    batcher = BatchedSeparator(tiny, batch_size=8)
    batcher.add("a", tracks["a"], shifts=1)
    batcher.add("b", tracks["b"], overlap=0.5)
    finished = batcher.step()
    assert batcher.forward_passes == 1 and sorted(finished) == ["a", "b"]
    assert_same_stems(batcher.pop("a"), ref_a)
    assert_same_stems(batcher.pop("b"), plain(tiny, tracks["b"], shifts=0, overlap=0.5))


def test_an_aborted_track_is_dropped_and_the_others_finish(tiny, tracks):
    def abort(info):
        if info["state"] == "start":
            raise KeyboardInterrupt

    progress = []
    batcher = BatchedSeparator(tiny, batch_size=2)
    batcher.add("a", tracks["a"], callback=lambda d: progress.append(d["state"]))
    batcher.add("b", tracks["b"], callback=abort)
    finished = []
    while batcher.pending():
        finished += batcher.step()
    assert sorted(finished) == ["a", "b"]
    with pytest.raises(KeyboardInterrupt):
        batcher.pop("b")
    assert_same_stems(batcher.pop("a"), plain(tiny, tracks["a"], shifts=0))
    assert progress.count("end") == 4


def test_popping_an_unfinished_track_is_refused(tiny, tracks):
    batcher = BatchedSeparator(tiny, batch_size=1)
    batcher.add("a", tracks["a"])
    batcher.step()
    with pytest.raises(RuntimeError, match="still has 3 segments"):
        batcher.pop("a")
    with pytest.raises(KeyError):
        batcher.add("a", tracks["a"])


def test_concurrent_tracks_share_one_forward_pass(tiny):
    """Three tracks of 8 segments, announced, then separated from three threads at once with a
    batch of 24: one forward pass (one track at a time would take three)."""
    wavs = {key: torch.from_numpy(make_signal(5.5, seed=i).T.copy()) for i, key in enumerate("xyz")}
    assert {len(plan_separation(tiny, wav.shape[-1]).segments) for wav in wavs.values()} == {8}
    shared = SharedBatcher(tiny, batch_size=24, linger_s=60)
    for key in wavs:
        shared.reserve(key)
    results = {}

    def run(key):
        results[key] = shared.separate(key, wavs[key])

    threads = [threading.Thread(target=run, args=(key,)) for key in wavs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for key, wav in wavs.items():
        assert_same_stems(results[key], plain(tiny, wav, shifts=0))
    assert shared.batcher.forward_passes == 1


def spy_on_passes(shared, attempts, hold=None):
    """Record the attempts' phases as each forward pass starts; `hold` (an event) holds the
    first pass until it is set."""
    phases, forward = [], shared.batcher.runner.forward

    def spy(model_index, inputs):
        phases.append([a.phase for a in attempts])
        if hold is not None and len(phases) == 1:
            assert hold.wait(30)
        return forward(model_index, inputs)

    shared.batcher.runner.forward = spy
    return phases


def start_separating(shared, current, wav, outcome):
    def run():
        try:
            outcome[current.task_id] = shared.separate(current.task_id, wav, abort=current.abort,
                                                       callback=current.on_chunk)
        except KeyboardInterrupt:
            outcome[current.task_id] = "aborted"

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_attempt_waits_until_its_first_segment_enters_a_pass(tiny, tracks):
    shared = SharedBatcher(tiny, batch_size=4, linger_s=60)
    a, b = Attempt("a", 1, phase="waiting"), Attempt("b", 1, phase="waiting")  # both decoded
    phases, outcome = spy_on_passes(shared, [a, b]), {}
    for current in (a, b):
        shared.reserve(current.task_id)
    threads = [start_separating(shared, a, tracks["a"], outcome)]
    wait_for(lambda: phases, 30, 0.01)       # "a" (4 segments) fills the first pass alone
    threads.append(start_separating(shared, b, tracks["b"], outcome))
    for thread in threads:
        thread.join(60)
    assert phases == [["separating", "waiting"], ["separating", "separating"]]
    assert shared.batcher.forward_passes == 2 and a.chunks_done == 4 and b.chunks_done == 3


def test_an_attempt_aborted_while_it_waits_leaves_and_the_others_finish(tiny, tracks):
    shared = SharedBatcher(tiny, batch_size=4, linger_s=60)
    a, b = Attempt("a", 1, phase="waiting"), Attempt("b", 1, phase="waiting")
    hold = threading.Event()
    phases, outcome = spy_on_passes(shared, [a, b], hold), {}
    threads = [start_separating(shared, a, tracks["a"], outcome)]
    wait_for(lambda: phases, 30, 0.01)
    threads.append(start_separating(shared, b, tracks["b"], outcome))
    b.abort.set()
    threads[1].join(30)
    assert outcome == {"b": "aborted"} and b.phase == "waiting"
    hold.set()
    threads[0].join(60)
    assert_same_stems(outcome["a"], plain(tiny, tracks["a"], shifts=0))
    assert shared.batcher.forward_passes == 1 and not shared.batcher.pending()


def test_a_pass_waits_for_an_announced_track_only_until_it_withdraws_or_lingered(tiny, tracks):
    shared = SharedBatcher(tiny, batch_size=8, linger_s=0.2)
    shared.reserve("never comes")
    assert_same_stems(shared.separate("c", tracks["c"]), plain(tiny, tracks["c"], shifts=0))
    shared = SharedBatcher(tiny, batch_size=8, linger_s=600)
    shared.reserve("fails to decode")
    outcome = {}
    thread = start_separating(shared, Attempt("c", 1), tracks["c"], outcome)
    wait_for(shared.batcher.pending, 30, 0.01)     # queued, and its pass waiting
    shared.withdraw("fails to decode")
    thread.join(60)
    assert_same_stems(outcome["c"], plain(tiny, tracks["c"], shifts=0))


def test_an_aborted_track_leaves_the_others_of_a_shared_batcher(tiny, tracks):
    shared = SharedBatcher(tiny, batch_size=2)
    outcome = {}

    def abort(info):
        raise KeyboardInterrupt

    def run(key, callback=None):
        try:
            outcome[key] = shared.separate(key, tracks[key], callback=callback)
        except KeyboardInterrupt:
            outcome[key] = "aborted"

    threads = [threading.Thread(target=run, args=("a", abort)), threading.Thread(target=run, args=("b",))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcome["a"] == "aborted"
    assert_same_stems(outcome["b"], plain(tiny, tracks["b"], shifts=0))


def test_a_failed_forward_pass_fails_every_track_in_it_and_hangs_none(tracks):
    model = tiny_htdemucs()
    shared = SharedBatcher(model, batch_size=8)

    def out_of_memory(model_index, inputs):
        raise RuntimeError("CUDA out of memory")

    shared.batcher.runner.forward = out_of_memory
    outcome, started = {}, threading.Barrier(2)

    def run(key):
        started.wait()
        try:
            shared.separate(key, tracks[key])
        except RuntimeError as exc:
            outcome[key] = str(exc)

    threads = [threading.Thread(target=run, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcome == {"a": "CUDA out of memory", "b": "CUDA out of memory"}
    assert not shared.batcher.pending() and not shared.batcher._tracks


def test_a_pass_that_runs_out_of_memory_is_split_and_later_passes_stay_smaller(tiny, tracks):
    """An injected out-of-memory error for passes of more than 2 segments: the pass is halved
    until it fits, the batch size stays at what fitted, and every track's stems are right."""
    batcher = BatchedSeparator(tiny, batch_size=8)
    sizes = fit_passes_of(batcher, 2)
    results = batcher.separate(tracks)
    for key, wav in tracks.items():
        assert_same_stems(results[key], plain(tiny, wav, shifts=0))
    assert batcher.batch_size == 2
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2


def test_an_error_other_than_out_of_memory_is_not_retried(tiny, tracks):
    batcher = BatchedSeparator(tiny, batch_size=8)
    calls = []

    def broken(model_index, inputs):
        calls.append(inputs.shape[0])
        raise RuntimeError("shapes do not match")

    batcher.runner.forward = broken
    batcher.add("a", tracks["a"])
    assert batcher.step() == ["a"] and calls == [4] and batcher.batch_size == 8
    with pytest.raises(RuntimeError, match="shapes do not match"):
        batcher.pop("a")


@pytest.mark.parametrize("free_mb, segment_mb, ceiling, expected", [
    (10_000, 100, 256, 80), (10_000, 100, 16, 16), (50, 100, 16, 1), (1000, 0, 16, 16)])
def test_the_batch_size_is_what_free_device_memory_holds(free_mb, segment_mb, ceiling, expected):
    assert fit_batch_size(ceiling, free_mb * 2**20, segment_mb * 2**20) == expected
