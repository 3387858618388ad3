"""Ensembles as one task, on a real service: two pools (each its models' workers), random-weight
HTDemucs models, 2-s clips; the stems compared with the models' own single-task stems."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raydemucs.core.errors import InvalidInput

from support import (
    HttpService,
    cli_env,
    run_cli,
    save_ensemble_model,
    save_tiny_htdemucs,
    wait_for,
    write_audio,
    write_roformer,
)

LSB = 1 / 2**15
STEMS = ("drums", "bass", "other", "vocals")
CHAIN = {"parts": {"voc": {"model": "tiny"},
                   "rest": {"model": "tiny2", "input": {"part": "voc", "without": "vocals"}}},
         "stems": {"vocals": {"take": "voc"}, **{s: {"take": "rest"} for s in STEMS[:3]}}}


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensembles")
    repo = root / "models"
    save_tiny_htdemucs(repo, "tiny", seed=0)
    save_tiny_htdemucs(repo, "tiny2", seed=1)
    save_ensemble_model(repo, "flaky", "Flaky", seed=2, marker=str(root / "flaky-failed"))
    save_ensemble_model(repo, "slow", "Slow", seed=3, delay_s=1.5)
    write_roformer(repo, "mel", "mel_band_roformer", seed=4)
    service = HttpService(
        root, serve_port, separation={"model": "tiny", "repo": str(repo), "wav_depth": "float32",
                                      "clip_mode": "none"},
        workers={"prefetch": 0, "max_workers": 1}, tasks={"abort_grace_s": 30.0},
        pools=[{"name": "a", "models": ["tiny", "flaky"], "min_workers": 1},
               {"name": "b", "models": ["tiny2", "slow", "mel"], "min_workers": 1}],
        ensembles={"presets": {"chain": CHAIN}})
    wait_for(lambda: len([w for w in service.manager.get_status()["workers"]
                          if w["state"] == "idle"]) == 2)
    yield service
    service.close()


def run(service, song: Path, out: Path, **options) -> dict:
    task_id = service.manager.add_task(song, output_dir=out, project_name="p",
                                       file_id=f"{song.parent.name}-{out.name}", **options)
    record = service.manager.wait(task_id, timeout=120)
    assert record["state"] == "succeeded", record["error"]
    return record


def stems(record: dict) -> dict[str, np.ndarray]:
    return {name: sf.read(path, dtype="float32")[0] for name, path in record["outputs"].items()}


def manifest(record: dict) -> dict:
    folder = Path(next(iter(record["outputs"].values()))).parent
    return json.loads((folder / "manifest.json").read_text())


def runs(service) -> tuple[int, int]:
    """Attempts the workers ran: (succeeded, failed)."""
    workers = service.manager.get_status()["workers"]
    return sum(w["tasks_done"] for w in workers), sum(w["tasks_failed"] for w in workers)


def settled(service, expected: int) -> int:
    return wait_for(lambda: (lambda done: done if done >= expected else None)(runs(service)[0]))


def test_an_average_and_takes_equal_the_models_own_stems(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=5)
    a = stems(run(service, song, tmp_path / "a", model="tiny"))
    b = stems(run(service, song, tmp_path / "b", model="tiny2"))
    spec = {"parts": {"a": {"model": "tiny"}, "b": {"model": "tiny2"}},
            "stems": {"vocals": {"average": ["a", "b"], "weights": [1, 3]},
                      "drums": {"take": "b"}, "bass": {"take": "a"},
                      "other": {"average": ["a", "b"], "domain": "magnitude"}}}
    record = run(service, song, tmp_path / "e", ensemble=spec)
    mixed = stems(record)
    assert np.abs(mixed["vocals"] - (a["vocals"] + 3 * b["vocals"]) / 4).max() <= LSB
    assert np.abs(mixed["drums"] - b["drums"]).max() <= LSB
    assert np.abs(mixed["bass"] - a["bass"]).max() <= LSB
    assert mixed["other"].shape == a["other"].shape and np.isfinite(mixed["other"]).all()
    parts = manifest(record)["ensemble"]["parts"]
    assert [(p["name"], p["model"], p["stems"]) for p in parts] == [
        ("a", "tiny", sorted(STEMS)), ("b", "tiny2", sorted(STEMS))]
    assert all(len(p["key"]) == 64 and p["made_by_task"] == record["task_id"] for p in parts)


def test_a_chain_runs_b_on_the_rest_and_a_cached_part_runs_once(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=6)
    chain = run(service, song, tmp_path / "c", ensemble=CHAIN)
    got = stems(chain)
    mix, rate = sf.read(song, dtype="float32")
    sf.write(tmp_path / "rest.wav", mix - got["vocals"], rate, subtype="FLOAT")
    alone = stems(run(service, tmp_path / "rest.wav", tmp_path / "r", model="tiny2"))
    for stem in STEMS[:3]:
        assert np.abs(got[stem] - alone[stem]).max() <= LSB

    before = settled(service, 0)
    other = {"parts": {"voc": {"model": "tiny"},
                       "drums": {"model": "tiny2", "input": {"part": "voc", "stem": "drums"}}},
             "stems": {"vocals": {"take": "voc"}, "drums": {"take": "drums"}}}
    second = run(service, song, tmp_path / "d", ensemble=other)
    assert settled(service, before + 2) == before + 2  # its new part and the combination
    first_part = manifest(second)["ensemble"]["parts"][0]
    assert first_part["made_by_task"] == chain["task_id"]


def test_vocals_from_a_mel_band_roformer_and_the_rest_from_htdemucs(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=10)
    mel = stems(run(service, song, tmp_path / "m", model="mel"))
    demucs = stems(run(service, song, tmp_path / "d", model="tiny"))
    spec = {"parts": {"mel": {"model": "mel"}, "demucs": {"model": "tiny"}},
            "stems": {"vocals": {"take": "mel"}, **{s: {"take": "demucs"} for s in STEMS[:3]}}}
    got = stems(run(service, song, tmp_path / "e", ensemble=spec))
    assert np.abs(got["vocals"] - mel["vocals"]).max() <= LSB
    for stem in STEMS[:3]:
        assert np.abs(got[stem] - demucs[stem]).max() <= LSB


def test_a_failing_part_is_retried_and_the_others_are_not(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=7)
    done, failed = runs(service)
    spec = {"parts": {"a": {"model": "tiny2"}, "f": {"model": "flaky"}},
            "stems": {s: {"average": ["a", "f"]} for s in STEMS}}
    record = run(service, song, tmp_path / "e", ensemble=spec)
    assert record["attempts"] == 2
    assert settled(service, done + 3) == done + 3  # a once, f once (after its failure), combine
    assert runs(service)[1] == failed + 1


def test_cancel_mid_ensemble_cancels_the_task(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=8)
    spec = {"parts": {"a": {"model": "tiny"},
                      "s": {"model": "slow", "input": {"part": "a", "without": "vocals"}}},
            "stems": {"vocals": {"take": "a"}, "drums": {"take": "s"}}}
    task_id = service.manager.add_task(song, output_dir=tmp_path / "e", project_name="p",
                                       file_id="cancelled", ensemble=spec)
    wait_for(lambda: "b-worker" in (service.manager.get_status(task_id)["worker"] or "")
             and service.manager.get_status(task_id)["progress"] >= 1 / 3)
    service.manager.cancel(task_id)
    record = service.manager.wait_all([task_id], timeout=60)[0]
    assert record["state"] == "cancelled"
    assert not (tmp_path / "e" / "p" / "cancelled").exists()


def post(service, song: Path, **fields):
    return service.client.post("/v1/tasks", files={"file": (song.name, song.read_bytes())},
                               data=fields)


BAD = [
    ({"preset": "nope"}, "no ensemble preset nope"),
    ({"ensemble": json.dumps({"parts": {"a": {"model": "htdemucs"}},
                              "stems": {"vocals": {"take": "a"}}})}, "is not served here"),
    ({"ensemble": json.dumps({"parts": {"a": {"model": "tiny"}},
                              "stems": {"guitar": {"take": "a"}}})}, "makes no stem 'guitar'"),
    ({"ensemble": json.dumps({"parts": {"a": {"model": "tiny", "input": {"part": "b", "stem": "x"}},
                                        "b": {"model": "tiny", "input": {"part": "a", "stem": "x"}}},
                              "stems": {"x": {"take": "a"}}})}, "(a cycle)"),
    ({"ensemble": json.dumps({"parts": {"a": {"model": "tiny"}, "b": {
        "model": "tiny2", "input": {"part": "a", "without": "guitar"}}},
        "stems": {"vocals": {"take": "b"}}})}, "makes no stem 'guitar'"),
    ({"ensemble": json.dumps({"parts": {f"p{i}": {"model": "tiny"} for i in range(5)},
                              "stems": {"vocals": {"average": [f"p{i}" for i in range(5)]}}})},
     "at most 4"),
    ({"preset": "chain", "ensemble": "{}"}, "not both"),
]


def test_bad_specs_are_refused_at_the_door_and_presets_run(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=2.0, seed=9)
    stored, listed = service.stored(), service.client.get("/v1/tasks").json()["tasks"]
    for fields, message in BAD:
        answer = post(service, song, **fields)
        assert answer.status_code == 422, fields
        error = answer.json()["error"]
        assert error["type"] == "InvalidInput" and message in error["message"]
        assert "\n" not in error["message"] and str(service.state) not in error["message"]
    with pytest.raises(InvalidInput, match="at most 4"):
        service.manager.add_task(song, ensemble=json.loads(BAD[5][0]["ensemble"]))
    assert service.stored() == stored
    assert service.client.get("/v1/tasks").json()["tasks"] == listed

    assert service.client.get("/v1/presets").json()["presets"] == [
        {"name": "chain", "models": ["tiny", "tiny2"], "stems": ["vocals", "drums", "bass", "other"]}]
    created = post(service, song, preset="chain").json()
    assert service.wait(created["task_id"])["state"] == "succeeded"
    zipped = service.client.get(f"/v1/tasks/{created['task_id']}/stems/drums")
    assert zipped.status_code == 200

    refused = run_cli("submit", song, "--preset", "nope", env=cli_env(service))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "no ensemble preset nope" in refused.stderr
    done = run_cli("submit", song, "--preset", "chain", "-o", tmp_path / "cli", "--file-id", "cli",
                   "--wait", "--json",
                   env=cli_env(service))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "cli" / "default" / "cli").iterdir()) == [
        "bass.wav", "drums.wav", "manifest.json", "other.wav", "vocals.wav"]
