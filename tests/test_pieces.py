"""One track split across worker actors: the same stems as one worker, even when a helper dies."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from raydemucs.config import SeparationConfig, load_config
from raydemucs.task import TaskSpec, new_task_id
from raydemucs.worker import SeparatorWorker

pytestmark = pytest.mark.ray
STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture
def workers(ray_cluster, tiny_repo):
    """Three workers holding the same weights (demucs_unittest would not do: it is initialised at
    random in each process)."""
    import ray

    config = load_config("test", overrides={"separation": {"model": "tiny", "repo": str(tiny_repo)}},
                         environ={}).to_dict()
    actor = ray.remote(SeparatorWorker).options(num_cpus=1, max_concurrency=4)
    handles = [actor.remote(f"w{i}", config) for i in range(3)]
    ray.get([h.ready.remote() for h in handles])
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


@pytest.mark.parametrize("helpers, two_stems", [(1, None), (2, "vocals")])
def test_split_across_workers_equals_one_worker(workers, tiny_repo, audio, tmp_path, helpers,
                                                two_stems):
    import ray

    lead, *others = workers
    song = audio("song.wav", seconds=8.0)
    plain = spec(song, tmp_path, "plain", two_stems=two_stems, repo=tiny_repo)
    split = spec(song, tmp_path, "split", two_stems=two_stems, repo=tiny_repo)
    plain = ray.get(lead.separate.remote(plain.to_dict(), 1))
    split = ray.get(lead.separate.remote(split.to_dict(), 1, None, None, others[:helpers]))
    assert plain["ok"] and split["ok"], (plain, split)
    stems = ["vocals", "no_vocals"] if two_stems else STEMS
    assert_same_stems(tmp_path / "p" / "plain", tmp_path / "p" / "split", stems)
    manifest = json.loads((tmp_path / "p" / "split" / "manifest.json").read_text())
    assert manifest["pieces"] == 1 + helpers
    assert json.loads((tmp_path / "p" / "plain" / "manifest.json").read_text())["pieces"] == 1


def test_a_dead_helper_costs_time_not_the_task(workers, tiny_repo, audio, tmp_path):
    import ray

    lead, helper, _ = workers
    song = audio("song.wav", seconds=6.0)
    plain = ray.get(lead.separate.remote(spec(song, tmp_path, "plain", repo=tiny_repo).to_dict(), 1))
    ray.kill(helper)
    split = ray.get(lead.separate.remote(spec(song, tmp_path, "split", repo=tiny_repo).to_dict(), 1,
                                         None, None, [helper]))
    assert plain["ok"] and split["ok"], split
    assert_same_stems(tmp_path / "p" / "plain", tmp_path / "p" / "split")
