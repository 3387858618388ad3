"""One track split across worker actors: the same stems as one worker, even when a helper dies."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from raydemucs.core.config import SeparationConfig, load_config
from raydemucs.core.task import TaskSpec, new_task_id
from raydemucs.scheduler.pool import WORKER_ACTOR
from raydemucs.worker.actor import CONTROL, SeparatorWorker

from support import save_tiny_htdemucs, wait_for

STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A tiny HTDemucs trained on 1 s segments: these tests' 1 s segments are each one second
    of work, not the 10 s of the default training length that apply_model pads them to."""
    return save_tiny_htdemucs(tmp_path_factory.mktemp("models"), segment=1)


def start_workers(tiny_repo, count: int, max_concurrency: int) -> list:
    """Worker actors as the pool makes them, holding the same weights (demucs_unittest would not
    do: it is initialised at random in each process)."""
    import ray

    config = load_config("test", overrides={"separation": {"model": "tiny", "repo": str(tiny_repo)}},
                         environ={}).to_dict()
    actor = WORKER_ACTOR.options(num_cpus=1, max_concurrency=max_concurrency)
    handles = [actor.remote(f"w{i}", config) for i in range(count)]
    ray.get([h.ready.options(concurrency_group=CONTROL).remote() for h in handles])
    return handles


@pytest.fixture
def workers(ray_cluster, tiny_repo):
    """Three workers that each hold up to 4 calls at once."""
    import ray

    handles = start_workers(tiny_repo, 3, max_concurrency=4)
    yield handles
    for handle in handles:
        ray.kill(handle)


def spec(path, out, file_id, **options):
    base = SeparationConfig(model="tiny", repo=str(options.pop("repo")), shifts=0, segment=1.0)
    return TaskSpec(task_id=new_task_id(), project="p", file_id=file_id, input_path=str(path),
                    output_dir=str(out), options=SeparationConfig(**{**base.__dict__, **options}))


def assert_same_stems(folder_a, folder_b, stems=STEMS):
    for stem in stems:
        a, _ = sf.read(folder_a / f"{stem}.wav", dtype="int16")
        b, _ = sf.read(folder_b / f"{stem}.wav", dtype="int16")
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1, stem


def test_split_across_two_helpers_equals_one_worker(workers, tiny_repo, audio, tmp_path):
    """Three pieces and a two-stems task (one helper: test_roformer_service's split)."""
    import ray

    helpers, two_stems = 2, "vocals"
    lead, *others = workers
    song = audio("song.wav", seconds=8.0)
    plain = spec(song, tmp_path, "plain", two_stems=two_stems, repo=tiny_repo)
    split = spec(song, tmp_path, "split", two_stems=two_stems, repo=tiny_repo)
    plain = ray.get(lead.separate.remote(plain.to_dict(), 1))
    split = ray.get(lead.separate.remote(split.to_dict(), 1, None, None, others[:helpers]))
    assert plain["ok"] and split["ok"], (plain, split)
    assert_same_stems(tmp_path / "p" / "plain", tmp_path / "p" / "split", ["vocals", "no_vocals"])
    manifest = json.loads((tmp_path / "p" / "split" / "manifest.json").read_text())
    assert manifest["pieces"] == 1 + helpers
    assert json.loads((tmp_path / "p" / "plain" / "manifest.json").read_text())["pieces"] == 1


def test_a_helper_killed_during_its_piece_costs_time_not_the_task(workers, tiny_repo, audio,
                                                                  tmp_path):
    import ray

    lead, helper, _ = workers
    song = audio("song.wav", seconds=60.0)  # a piece of 30 one-second segments: killed inside it
    plain = ray.get(lead.separate.remote(spec(song, tmp_path, "plain", repo=tiny_repo).to_dict(), 1))
    split = lead.separate.remote(spec(song, tmp_path, "split", repo=tiny_repo).to_dict(), 1,
                                 None, None, [helper])
    progress = []
    wait_for(lambda: progress.extend(t["progress"] for t in ray.get(helper.poll.remote())["tasks"])
             or (progress and progress[-1] > 0), timeout_s=60, step_s=0.05)
    ray.kill(helper)
    assert progress[-1] < 0.5, progress  # the helper was computing its piece
    split = ray.get(split)
    assert plain["ok"] and split["ok"], split
    assert_same_stems(tmp_path / "p" / "plain", tmp_path / "p" / "split")


def test_an_aborted_lead_stops_a_helper_that_runs_one_call_at_a_time(ray_cluster, tiny_repo, audio,
                                                                      tmp_path):
    """With prefetch 0 a worker runs one attempt (or piece) at a time, beside its control group:
    an aborted lead stops its helper's piece through that group, at its next segment. (An abort
    sent as an ordinary call would wait behind the piece it should stop.)"""
    import ray

    lead, helper = start_workers(tiny_repo, 2, max_concurrency=1)
    try:
        task = spec(audio("long.wav", seconds=240.0), tmp_path, "split", repo=tiny_repo)
        result = lead.separate.remote(task.to_dict(), 1, None, None, [helper])

        def piece_progress():
            tasks = ray.get(helper.poll.options(concurrency_group=CONTROL).remote())["tasks"]
            return tasks[0]["progress"] if tasks else None

        wait_for(lambda: (piece_progress() or 0) > 0, timeout_s=120, step_s=0.05)
        lead.abort.options(concurrency_group=CONTROL).remote(task.task_id, 1)
        assert ray.get(result)["error"]["type"] == "SeparationAborted"
        seen = []  # the piece's progress until it left the helper
        wait_for(lambda: seen.append(piece_progress()) or seen[-1] is None, timeout_s=300,
                 step_s=0.02)
        assert max([p for p in seen if p is not None], default=0) < 0.5, seen
    finally:
        for handle in (lead, helper):
            ray.kill(handle)


def split_long_track(make_service, tiny_repo, audio, tmp_path, seconds: float):
    """A service of 2 idle workers that splits tracks over 5 s, and a track submitted to it."""
    manager = make_service(workers={"max_workers": 2}, tasks={"split_over_s": 5.0},
                           separation={"model": "tiny", "repo": str(tiny_repo)})
    song = audio("long.wav", seconds=seconds)
    wait_for(lambda: [w["state"] for w in manager.get_status()["workers"]] == ["idle", "idle"])
    task_id = manager.add_task(song, output_dir=tmp_path / "out", segment=1.0, shifts=0)
    return manager, song, task_id


def test_the_service_splits_a_long_track_across_its_idle_workers(make_service, tiny_repo, audio,
                                                                 tmp_path):
    manager, song, task_id = split_long_track(make_service, tiny_repo, audio, tmp_path, 10.0)
    record = manager.wait(task_id, timeout=180)
    assert record["state"] == "succeeded", record["error"]
    folder = tmp_path / "out" / "default" / "long"
    assert json.loads((folder / "manifest.json").read_text())["pieces"] == 2
    assert all(w["lent_to"] is None and w["state"] == "idle" for w in manager.get_status()["workers"])
    config = load_config("test", overrides={"separation": {"model": "tiny", "repo": str(tiny_repo)}},
                         environ={})
    reference = SeparatorWorker("reference", config.to_dict())
    assert reference.separate(spec(song, tmp_path / "ref", "long", repo=tiny_repo).to_dict(), 1)["ok"]
    assert_same_stems(tmp_path / "ref" / "p" / "long", folder)


def test_cancelling_a_split_track_stops_its_helpers_and_frees_them(make_service, tiny_repo, audio,
                                                                   tmp_path):
    manager, _, task_id = split_long_track(make_service, tiny_repo, audio, tmp_path, 120.0)
    wait_for(lambda: any(w["lent_to"] == task_id for w in manager.get_status()["workers"]))
    manager.cancel(task_id)
    assert manager.wait_all([task_id], timeout=60)[0]["state"] == "cancelled"
    wait_for(lambda: [(w["state"], w["lent_to"]) for w in manager.get_status()["workers"]]
             == [("idle", None)] * 2, timeout_s=30)
    assert not (tmp_path / "out" / "default" / "long").exists()
