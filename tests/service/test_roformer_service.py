"""RoFormer models on a real service: stems from `add_task` (batched, and streamed), and a track
split across two worker actors, each within 1 LSB of the training repo's `demix`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from raydemucs.core.config import SeparationConfig, load_config
from raydemucs.core.task import TaskSpec, new_task_id
from raydemucs.models.roformer.config import load_config as roformer_config
from raydemucs.scheduler.pool import WORKER_ACTOR
from raydemucs.worker.actor import CONTROL

from roformer_reference import reference_class, reference_demix
from support import service_config, write_audio, write_roformer

ARCHITECTURES = ["bs_roformer", "mel_band_roformer"]
STEMS = ["vocals", "other"]
LSB = 1 / 32768
EXACT = {"wav_depth": "float32", "clip_mode": "none"}   # the stems as computed


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roformers")
    for architecture in ARCHITECTURES:
        write_roformer(folder, architecture, architecture, seed=len(architecture))
    return folder


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("in") / "song.wav", seconds=2.0, seed=5)


def reference(repo, name: str, song) -> np.ndarray:
    """`demix` with the reference network on the checkpoint: `[stems, channels, time]`."""
    config = roformer_config(repo / f"{name}.yaml")
    network = reference_class(config.architecture)(**config.kwargs)
    network.load_state_dict(torch.load(repo / f"{name}.ckpt", weights_only=True))
    mix = sf.read(song, dtype="float32")[0].T
    return reference_demix(network.eval(), config, mix)


def written(folder) -> np.ndarray:
    return np.stack([sf.read(folder / f"{stem}.wav", dtype="float32")[0].T for stem in STEMS])


def assert_within_one_lsb(stems: np.ndarray, ref: np.ndarray) -> None:
    assert stems.shape == ref.shape
    assert np.abs(stems - ref).max() <= LSB, np.abs(stems - ref).max()


@pytest.fixture(scope="module")
def service(ray_cluster, repo, tmp_path_factory):
    """One worker that batches its tasks' chunks (batch_size 2) and holds both models."""
    from raydemucs import WorkerManager

    manager = WorkerManager(service_config(
        tmp_path_factory.mktemp("service"), workers={"max_workers": 1, "batch_size": 2,
                                                     "max_models": 2},
        separation={"model": ARCHITECTURES[0], "repo": str(repo), **EXACT}))
    manager.scheduler(create=True)
    yield manager
    manager.shutdown(now=True)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_roformer_task_and_a_streamed_one_equal_the_reference(service, repo, song, tmp_path,
                                                                name):
    out = tmp_path / "out"
    tasks = {kind: service.add_task(song, file_id=kind, output_dir=out, project_name=name,
                                    model=name, repo=str(repo), **options)
             for kind, options in {"batched": {}, "streamed": {"stream_over_s": 0}}.items()}
    records = service.wait_all(list(tasks.values()), timeout=240)
    assert [r["state"] for r in records] == ["succeeded"] * 2, [r["error"] for r in records]
    ref = reference(repo, name, song)
    for kind in tasks:
        assert_within_one_lsb(written(out / name / kind), ref)
        manifest = json.loads((out / name / kind / "manifest.json").read_text())
        assert manifest["streamed"] == (kind == "streamed")


def test_a_roformer_track_split_across_two_workers_equals_one_worker(ray_cluster, repo, song,
                                                                    tmp_path):
    import ray

    config = load_config("test", overrides={"separation": {"model": ARCHITECTURES[0],
                                                           "repo": str(repo)},
                                            "workers": {"max_models": 2}}, environ={}).to_dict()
    actor = WORKER_ACTOR.options(num_cpus=1, max_concurrency=4)
    lead, helper = handles = [actor.remote(f"w{i}", config) for i in range(2)]
    ray.get([h.ready.options(concurrency_group=CONTROL).remote() for h in handles])
    try:
        for name in ARCHITECTURES:
            options = SeparationConfig(model=name, repo=str(repo), **EXACT)
            specs = {kind: TaskSpec(task_id=new_task_id(), project=name, file_id=kind,
                                    input_path=str(song), output_dir=str(tmp_path),
                                    options=options) for kind in ("plain", "split")}
            plain = ray.get(lead.separate.remote(specs["plain"].to_dict(), 1))
            split = ray.get(lead.separate.remote(specs["split"].to_dict(), 1, None, None,
                                                 [helper]))
            assert plain["ok"] and split["ok"], (plain, split)
            folder = tmp_path / name
            assert json.loads((folder / "split" / "manifest.json").read_text())["pieces"] == 2
            assert_within_one_lsb(written(folder / "split"), written(folder / "plain"))
            assert_within_one_lsb(written(folder / "plain"), reference(repo, name, song))
    finally:
        for handle in handles:
            ray.kill(handle)
