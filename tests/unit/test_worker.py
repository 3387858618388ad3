"""SeparatorWorker with real Demucs code, no Ray: outputs, formats, two-stems, abort, equivalence."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from raydemucs.audio.checks import validate_input
from raydemucs.core.config import InputConfig, SeparationConfig, load_config
from raydemucs.core.task import TaskSpec, new_task_id
from raydemucs.models import loading
from raydemucs.separation.engine import plan_separation
from raydemucs.worker.actor import SeparatorWorker

from support import wait_for

STEMS = ["drums", "bass", "other", "vocals"]


def make_worker(repo=None, model="demucs_unittest", **separation):
    config = load_config("test", overrides={"separation": {"model": model, "repo": repo and str(repo),
                                                           **separation}}, environ={})
    return SeparatorWorker("worker-t", config.to_dict())


def make_spec(input_path, out, file_id="song", **options):
    base = SeparationConfig(model="demucs_unittest", shifts=0)
    return TaskSpec(task_id=new_task_id(), project="proj", file_id=file_id, input_path=str(input_path),
                    output_dir=str(out), options=SeparationConfig(**{**base.__dict__, **options}))


def progress_of(worker):
    tasks = worker.poll()["tasks"]
    return tasks[0]["progress"] if tasks else None


def wait_while_running(threads, predicate, timeout_s: float = 60.0):
    """`wait_for(predicate)`, failing at once when an attempt's thread has already ended."""
    def check():
        value = predicate()
        if not value and not all(thread.is_alive() for thread in threads):
            raise AssertionError("an attempt ended before the condition was met")
        return value
    return wait_for(check, timeout_s, step_s=0.01)


def test_separates_into_all_stems_with_a_manifest(audio, tmp_path):
    worker = make_worker()
    spec = make_spec(audio("a.wav", seconds=2.0), tmp_path / "out")
    result = worker.separate(spec.to_dict(), attempt=1)
    assert result["ok"], result
    assert sorted(result["outputs"]) == sorted(STEMS)
    data, rate = sf.read(result["outputs"]["vocals"])
    assert rate == 44100 and data.shape[1] == 2 and abs(len(data) - 88200) < 10

    manifest = json.loads((Path(spec.output_location) / "manifest.json").read_text())
    assert manifest["task_id"] == spec.task_id and manifest["attempt"] == 1
    assert manifest["options"]["shifts"] == 0 and 1.9 < manifest["input"]["duration_s"] < 2.1
    assert {"decode_s", "separate_s"} <= set(manifest["timings"])
    assert worker.poll()["tasks_done"] == 1


@pytest.mark.parametrize("suffix, fmt, depth, subtype", [
    (".mp3", "wav", "int24", "PCM_24"), (".flac", "wav", "float32", "FLOAT"),
    (".wav", "flac", "int16", "PCM_16"), (".wav", "mp3", "int16", None)])
def test_input_and_output_formats(audio, tmp_path, suffix, fmt, depth, subtype):
    worker = make_worker()
    spec = make_spec(audio(f"in{suffix}", seconds=1.5), tmp_path / "out", format=fmt, wav_depth=depth)
    result = worker.separate(spec.to_dict(), 1)
    assert result["ok"], result
    path = result["outputs"]["drums"]
    assert path.endswith(f".{fmt}")
    if subtype:
        assert sf.info(path).subtype == subtype
    else:
        assert 1.4 < validate_input(path, InputConfig()) < 1.7


def test_two_stems_writes_the_stem_and_the_rest(audio, tmp_path):
    worker = make_worker()
    spec = make_spec(audio("a.wav", seconds=1.0), tmp_path / "out", two_stems="vocals")
    result = worker.separate(spec.to_dict(), 1)
    assert sorted(result["outputs"]) == ["no_vocals", "vocals"]


def test_a_model_from_a_local_repo(audio, tmp_path, tiny_repo):
    worker = make_worker(repo=tiny_repo, model="tiny")
    assert worker.ready()["models"] == [("tiny", str(tiny_repo))]
    spec = make_spec(audio("a.wav", seconds=1.0), tmp_path / "out", model="tiny", repo=str(tiny_repo))
    assert worker.separate(spec.to_dict(), 1)["ok"]


def test_errors_come_back_typed_and_nothing_is_written(audio, tmp_path, tiny_repo):
    worker = make_worker()
    out = tmp_path / "out"
    cases = [
        (make_spec(tmp_path / "missing.wav", out), "InvalidInput"),
        (make_spec(audio("a.wav", seconds=1.0), out, model="nosuchmodel", repo=str(tiny_repo)), "ModelNotFound"),
        (make_spec(audio("b.wav", seconds=1.0), out, two_stems="piano"), "InvalidInput"),
        (make_spec(audio("c.wav", seconds=1.0), out, model="tiny", repo=str(tiny_repo), segment=60.0),
         "InvalidInput"),
    ]
    for spec, kind in cases:
        result = worker.separate(spec.to_dict(), 1)
        assert not result["ok"] and result["error"]["type"] == kind, result
        assert "\n" not in result["error"]["message"]
    assert not out.exists() or not any(out.rglob("*.wav"))


def test_abort_stops_at_the_next_segment(audio, tmp_path):
    worker = make_worker()
    spec = make_spec(audio("long.wav", seconds=60.0), tmp_path / "out", segment=2.0, shifts=1)
    results = []
    thread = threading.Thread(target=lambda: results.append(worker.separate(spec.to_dict(), 1)))
    thread.start()
    wait_while_running([thread], lambda: progress_of(worker))
    assert worker.abort(spec.task_id) and not worker.abort("another-task")
    thread.join(30)
    assert results[0]["error"]["type"] == "SeparationAborted"
    assert not Path(spec.output_location).exists()


def test_progress_rises_during_a_task(audio, tmp_path):
    worker = make_worker()
    spec = make_spec(audio("long.wav", seconds=30.0), tmp_path / "out", segment=2.0)
    seen = []
    thread = threading.Thread(target=worker.separate, args=(spec.to_dict(), 1))
    thread.start()

    def finished():
        seen.append(progress_of(worker))
        return not thread.is_alive()

    wait_for(finished, 120, step_s=0.05)
    values = [p for p in seen if p is not None]
    assert values == sorted(values) and len(set(values)) > 3 and max(values) <= 0.99


def test_equivalent_to_demucs_separate_within_one_lsb(audio, tmp_path, tiny_repo):
    """Same model, input and --shifts 0: stems equal `python -m demucs.separate` to 1 LSB of 16-bit."""
    song = audio("eq.wav", seconds=4.0, seed=3)
    subprocess.run([sys.executable, "-m", "demucs.separate", "-n", "tiny", "--repo", str(tiny_repo),
                    "--shifts", "0", "-o", str(tmp_path / "ref"), str(song)],
                   check=True, capture_output=True)
    worker = make_worker(repo=tiny_repo, model="tiny")
    spec = make_spec(song, tmp_path / "out", model="tiny", repo=str(tiny_repo))
    result = worker.separate(spec.to_dict(), 1)
    for stem in STEMS:
        ours, _ = sf.read(result["outputs"][stem], dtype="int16")
        reference, _ = sf.read(tmp_path / "ref" / "tiny" / "eq" / f"{stem}.wav", dtype="int16")
        assert ours.shape == reference.shape
        assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def test_stems_of_an_identical_earlier_task_are_linked_not_recomputed(audio, tmp_path):
    worker = make_worker()
    song = audio("a.wav", seconds=1.0)
    first = make_spec(song, tmp_path / "out", file_id="first")
    assert worker.separate(first.to_dict(), 1)["ok"]
    second = make_spec(song, tmp_path / "out", file_id="second")
    result = worker.separate(second.to_dict(), 1, reuse_from=first.output_location)
    assert result["ok"] and result["cached_from"] == first.task_id
    for stem, path in result["outputs"].items():
        original = Path(first.output_location) / f"{stem}.wav"
        assert open(path, "rb").read() == original.read_bytes()
    manifest = json.loads((Path(second.output_location) / "manifest.json").read_text())
    assert manifest["cached_from"] == first.task_id and manifest["task_id"] == second.task_id
    assert worker.poll()["tasks_done"] == 2


def test_a_second_attempt_waits_for_the_model_and_can_be_aborted_while_waiting(audio, tmp_path):
    worker = make_worker()
    running = make_spec(audio("long.wav", seconds=40.0), tmp_path / "out", file_id="a", segment=2.0)
    waiting = make_spec(audio("next.wav", seconds=1.0), tmp_path / "out", file_id="b")
    aborted = make_spec(audio("gone.wav", seconds=1.0), tmp_path / "out", file_id="c")
    results = {}

    def run(spec):
        results[spec.file_id] = worker.separate(spec.to_dict(), 1)

    threads = [threading.Thread(target=run, args=(s,)) for s in (running, waiting, aborted)]
    threads[0].start()
    wait_while_running(threads[:1], lambda: progress_of(worker))
    threads[1].start()
    threads[2].start()
    wait_while_running(threads, lambda: sorted(t["phase"] for t in worker.poll()["tasks"])
                       == ["separating", "waiting", "waiting"])
    assert worker.abort(aborted.task_id)
    threads[2].join(10)
    assert results["c"]["error"]["type"] == "SeparationAborted" and threads[0].is_alive()
    for thread in threads[:2]:
        thread.join(120)
    assert results["a"]["ok"] and results["b"]["ok"]


def test_the_model_serves_attempts_in_arrival_order_not_decode_order(audio, tmp_path):
    """A prefetched short file decodes first, yet waits for the long one that arrived before it."""
    worker = make_worker()
    first = make_spec(audio("first.wav", seconds=60.0), tmp_path / "out", file_id="first", segment=2.0)
    second = make_spec(audio("second.wav", seconds=1.0), tmp_path / "out", file_id="second")
    results = {}

    def run(spec):
        results[spec.file_id] = worker.separate(spec.to_dict(), 1)

    threads = [threading.Thread(target=run, args=(spec,)) for spec in (first, second)]
    threads[0].start()
    wait_while_running(threads[:1], lambda: first.task_id in {t["task_id"] for t in worker.poll()["tasks"]})
    threads[1].start()
    for thread in threads:
        thread.join(120)
    assert results["first"]["ok"] and results["second"]["ok"]
    finished = {name: json.loads((tmp_path / "out" / "proj" / name / "manifest.json").read_text())
                for name in ("first", "second")}
    assert finished["first"]["created_at"] < finished["second"]["created_at"]


@pytest.mark.parametrize("two_stems", [None, "vocals"])
def test_a_streamed_task_equals_the_in_memory_one_within_one_lsb(audio, tmp_path, tiny_repo, two_stems):
    """Inputs over `stream_over_s` go through the bounded-memory path; the stems do not change."""
    worker = make_worker(repo=tiny_repo, model="tiny")
    song = audio("long.wav", seconds=12.0, seed=5)
    options = dict(model="tiny", repo=str(tiny_repo), two_stems=two_stems)
    plain = make_spec(song, tmp_path / "out", file_id="plain", stream_over_s=None, **options)
    streamed = make_spec(song, tmp_path / "out", file_id="streamed", stream_over_s=0.0, **options)
    results = [worker.separate(s.to_dict(), 1) for s in (plain, streamed)]
    assert all(r["ok"] for r in results), results
    assert sorted(results[0]["outputs"]) == sorted(results[1]["outputs"])
    for stem, path in results[0]["outputs"].items():
        a, _ = sf.read(path, dtype="int16")
        b, _ = sf.read(results[1]["outputs"][stem], dtype="int16")
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    manifests = [json.loads((Path(s.output_location) / "manifest.json").read_text()) for s in (plain, streamed)]
    assert [m["streamed"] for m in manifests] == [False, True]
    assert all(m["peak_rss_bytes"] > 50 * 2**20 for m in manifests)


def test_an_abort_that_overtakes_its_separate_call_still_applies(audio, tmp_path):
    worker = make_worker()
    spec = make_spec(audio("a.wav", seconds=1.0), tmp_path / "out")
    assert not worker.abort(spec.task_id, 2)
    assert worker.separate(spec.to_dict(), 1)["ok"]  # another attempt is not touched
    assert worker.separate(spec.to_dict(), 2)["error"]["type"] == "SeparationAborted"


def test_batched_attempts_share_forward_passes_and_equal_one_at_a_time(audio, tmp_path):
    """batch_size > 1 (for GPU workers; checked here on CPU): three tasks in the worker at once
    wait in "waiting", then share forward passes, and each one's stems equal the unbatched ones
    within 1 LSB. Their 9 segments of 1 s are 6 whole ones and 3 ends of 0.25 s (HDemucs batches
    by input length): two passes of up to 16; one task at a time would take six."""
    songs = [audio(f"s{i}.wav", seconds=1.0 + 0.75 * i, seed=i) for i in range(3)]
    torch.manual_seed(0)  # demucs_unittest's weights are random: the same in both workers
    plain = make_worker()
    for song in songs:
        spec = make_spec(song, tmp_path / "plain", file_id=song.stem, segment=1.0)
        assert plain.separate(spec.to_dict(), 1)["ok"]
    config = load_config("test", overrides={"separation": {"model": "demucs_unittest"},
                                            "workers": {"batch_size": 16}}, environ={})
    torch.manual_seed(0)
    batched = SeparatorWorker("worker-b", config.to_dict())
    specs = [make_spec(song, tmp_path / "batched", file_id=song.stem, segment=1.0) for song in songs]
    separator = batched.models.get("demucs_unittest", None)
    lengths = [[s.input_length for s in plan_separation(separator.model, sf.info(song).frames,
                                                        segment=1.0).segments] for song in songs]
    assert lengths == [[44100] * n + [11025] for n in (1, 2, 3)]
    batcher = batched.strategies.batcher(separator, specs[0].options)
    batcher.linger_s = 60
    batcher.reserve("gate")  # a pass with room left waits: every attempt decodes and queues first
    results = {}

    def run(spec):
        results[spec.file_id] = batched.separate(spec.to_dict(), 1)

    threads = [threading.Thread(target=run, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    wait_while_running(threads, lambda: [t["phase"] for t in batched.poll()["tasks"]] == ["waiting"] * 3)
    batcher.withdraw("gate")
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and all(result["ok"] for result in results.values()), results
    assert batcher.batcher.forward_passes == 2
    for song in songs:
        for stem in STEMS:
            a, _ = sf.read(tmp_path / "plain" / "proj" / song.stem / f"{stem}.wav", dtype="int16")
            b, _ = sf.read(tmp_path / "batched" / "proj" / song.stem / f"{stem}.wav", dtype="int16")
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_dropped_model_takes_its_batcher_and_runners_with_it(audio, tmp_path, tiny_repo):
    """A batching worker keeps `max_models` models, and no batcher or runner of a model it
    dropped (each holds the model: on a GPU, its weights)."""
    config = load_config("test", overrides={"separation": {"model": "demucs_unittest"},
                                            "workers": {"batch_size": 2, "max_models": 1}},
                         environ={})
    worker = SeparatorWorker("worker-b", config.to_dict())
    song = audio("a.wav", seconds=1.0)
    first = make_spec(song, tmp_path / "out", file_id="first")
    second = make_spec(song, tmp_path / "out", file_id="second", model="tiny", repo=str(tiny_repo))
    dropped = worker.models.get("demucs_unittest", None).model
    assert worker.separate(first.to_dict(), 1)["ok"]
    assert [key[0] for key in worker.strategies._batchers] == ["demucs_unittest"]
    assert worker.separate(second.to_dict(), 1)["ok"]
    assert worker.models.keys() == [("tiny", str(tiny_repo))]
    assert [key[0] for key in worker.strategies._batchers] == ["tiny"]
    assert all(model is not dropped for model, _ in worker.strategies._runners)


def test_the_model_cache_is_read_safely_while_another_thread_loads(monkeypatch):
    """`poll` reads the cache (`keys`, `stems`) on the control thread while an attempt may load a
    model: the load waits for the read, which never sees the cache change under it."""
    reading, loaded = threading.Event(), threading.Event()

    class Model:
        @property
        def sources(self):  # read by `stems`, while the other thread loads and drops a model
            reading.set()
            loaded.wait(0.5)
            return ["drums"]

    monkeypatch.setattr(loading, "load_separator",
                        lambda name, repo, device: SimpleNamespace(model=Model()))
    cache = loading.ModelCache(max_models=2, device="cpu")
    cache.get("a", None)
    cache.get("b", None)

    def load():
        reading.wait(5)
        cache.get("c", None)
        loaded.set()

    thread = threading.Thread(target=load)
    thread.start()
    assert cache.stems() == {"a": ["drums"], "b": ["drums"]}
    thread.join(5)
    assert cache.keys() == [("b", None), ("c", None)]


def trace_attempt(worker: SeparatorWorker, spec: TaskSpec) -> tuple[dict, list]:
    """Run one attempt under `sys.setprofile`: every call into raydemucs as `(module, caller)`,
    each the file under raydemucs/ (the caller: the nearest raydemucs frame, None if none)."""
    import raydemucs

    root = str(Path(raydemucs.__file__).parent) + "/"

    def module_of(frame):
        while frame is not None and not frame.f_code.co_filename.startswith(root):
            frame = frame.f_back
        return frame and frame.f_code.co_filename[len(root):]

    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(root):
            calls.append((module_of(frame), module_of(frame.f_back)))

    sys.setprofile(profile)
    try:
        result = worker.separate(spec.to_dict(), 1)
    finally:
        sys.setprofile(None)
    return result, calls


def test_an_attempt_is_a_pipeline_of_few_modules(audio, tmp_path):
    """One default attempt (in memory, eager fp32, a local wav) goes from the actor through at
    most 6 modules, outside raydemucs/core (the shared vocabulary): the actor hands each step to
    the module that holds it (files, model, separation, files, memory), and no module calls back
    into the actor, so control comes back to it only between steps. Beneath the steps, the
    modules each step uses (docs/architecture.md, "One attempt through a worker"); at the package
    move, an attempt went through 12 modules from the actor, back to it 16 times, 15 in all; 13
    since a task's `two_stems` is judged by the catalogue's one rule (models/catalogue.py); 14
    since the engine runs each architecture through one interface (separation/architectures/)."""
    worker = make_worker()
    assert worker.strategies.runtime == "eager"
    result, calls = trace_attempt(worker, make_spec(audio("a.wav", seconds=2.0), tmp_path / "out"))
    assert result["ok"], result
    actor = "worker/actor.py"
    calls = [(module, caller) for module, caller in calls if not module.startswith("core/")]
    steps = [module for module, caller in calls if caller == actor and module != actor]
    steps = [module for i, module in enumerate(steps) if i == 0 or steps[i - 1] != module]
    assert len({actor, *steps}) <= 6, steps
    assert len(steps) <= 10, steps  # strategies, files, models, strategies, files, back out, health
    assert {caller for module, caller in calls if module == actor} <= {actor, None}
    assert len({module for module, _ in calls}) <= 14


def test_separation_does_not_import_the_worker():
    """The arrow goes one way: the worker uses separation/, which knows neither the worker nor
    Ray (the worker hands it what it needs: a memory meter, helper adapters)."""
    import raydemucs.separation

    for path in Path(raydemucs.separation.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        assert not {name for name in imported if "worker" in name or name.split(".")[0] == "ray"}, path
