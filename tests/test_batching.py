"""BatchedSeparator: segments of several tracks per forward pass, same stems as one by one."""
from __future__ import annotations

import random
import threading

import pytest
import torch
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import SOURCES, get_model

from raydemucs.batching import BatchedSeparator, SharedBatcher
from raydemucs.engine import track_stats

from conftest import make_signal

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


def test_threads_sharing_a_batcher_fill_the_batches(tiny, tracks):
    shared = SharedBatcher(tiny, batch_size=8)
    results, started = {}, threading.Barrier(len(tracks))

    def run(key):
        started.wait()
        results[key] = shared.separate(key, tracks[key])

    threads = [threading.Thread(target=run, args=(key,)) for key in tracks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for key, wav in tracks.items():
        assert_same_stems(results[key], plain(tiny, wav, shifts=0))
    assert shared.batcher.forward_passes < 4 + 3 + 1  # one at a time would take 8


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
